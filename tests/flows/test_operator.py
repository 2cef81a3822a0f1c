"""Operator settings: what a run parameter cannot change."""

import pytest

from flows.run import allowed
from schemas import parse_job
from schemas.errors import JobError
from schemas.operator import OperatorPolicy

BASE = {"source": {"uri": "s3://in/x"}, "output": "s3://out/y"}
UNPINNED = {"model": {"checkpoint": "s3://m/a.pt", "allow_unpinned": True}}
HEAD, EVIL = "ray://head:10001", "ray://evil:10001"
ONLY_OK = {"FASTSAM_LABEL_WEIGHTS_FROM": "s3://models/ok/"}


def _job(**extra):
    return parse_job({**BASE, **extra}, environ={})


@pytest.mark.parametrize(
    "env, job, error",
    [
        ({}, UNPINNED, "model.allow_unpinned: unpinned"),
        ({}, {"prompts": ["a"], "clip": {"weights": "/w.bin", "allow_unpinned": True}}, "clip.allow_unpinned"),
        ({"FASTSAM_LABEL_ALLOW_UNPINNED": "1"}, UNPINNED, None),
        ({"FASTSAM_LABEL_ALLOW_UNPINNED": "maybe"}, {}, "is not a boolean"),
        ({"FASTSAM_LABEL_RAY_ADDRESS": HEAD}, {"compute": {"ray_address": EVIL}}, "cannot send"),
        ({"FASTSAM_LABEL_RAY_ADDRESS": HEAD}, {"compute": {"ray_address": HEAD}}, None),
        (ONLY_OK, {"model": {"checkpoint": "s3://models/okay.pt", "sha256": "a" * 64}}, "not under"),
        (ONLY_OK, {"model": {"checkpoint": "s3://models/ok/x.pt", "sha256": "a" * 64}}, None),
        ({}, {"compute": {"ray_address": "ray://anywhere:10001"}}, None),  # no operator setting: the job decides
    ],
)  # fmt: skip
def test_policy(env, job, error):
    policy_job = _job(**job)
    if error is None:
        assert OperatorPolicy.from_env(env).apply(policy_job).compute.ray_address == (
            env.get("FASTSAM_LABEL_RAY_ADDRESS") or policy_job.compute.ray_address
        )
    else:
        with pytest.raises(JobError, match=error):
            OperatorPolicy.from_env(env).apply(policy_job)


def test_the_operators_cluster_is_filled_in():
    job = OperatorPolicy.from_env({"FASTSAM_LABEL_RAY_ADDRESS": "ray://head:10001"}).apply(_job())
    assert job.compute.ray_address == "ray://head:10001"


def test_a_flow_parameter_cannot_turn_unpinned_weights_on(monkeypatch):
    monkeypatch.delenv("FASTSAM_LABEL_ALLOW_UNPINNED", raising=False)
    params = _job(model={"checkpoint": "s3://m/a.pt", "allow_unpinned": True}).model_dump(mode="json")
    with pytest.raises(JobError, match="the operator has not set FASTSAM_LABEL_ALLOW_UNPINNED=1"):
        allowed(params)
    monkeypatch.setenv("FASTSAM_LABEL_ALLOW_UNPINNED", "1")
    assert allowed(params).model.allow_unpinned


@pytest.mark.parametrize(
    "error, retried",
    [
        ("StoreUnavailableError", True),  # the store was unreachable or throttling after botocore's retries
        ("StoreAccessError", False),
        ("ObjectNotFoundError", False),
        ("transient ShardError", True),
        ("ShardError", False),
        ("RuntimeError", False),
    ],
)
def test_prefect_retries_only_what_may_pass(error, retried):
    from prefect.states import Failed

    from flows.label import transient_only
    from schemas.errors import ObjectNotFoundError, ShardError, StoreAccessError, StoreUnavailableError

    exc = {
        "StoreUnavailableError": StoreUnavailableError("x: SlowDown"),
        "StoreAccessError": StoreAccessError("x: AccessDenied"),
        "ObjectNotFoundError": ObjectNotFoundError("x does not exist"),
        "transient ShardError": ShardError("shard 1", StoreUnavailableError("x: 503")),
        "ShardError": ShardError("shard 1", ValueError("not parquet")),
        "RuntimeError": RuntimeError("bug"),
    }[error]
    assert transient_only(None, None, Failed(data=exc)) is retried
