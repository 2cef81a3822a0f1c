"""Bad jobs, stores and weights fail in seconds, before any work, with one line and the right exit code."""

import re
import time

import pytest
import yaml

from flows.cli import main
from schemas.errors import ClusterSettingError
from tests.support.faults import FaultProxy
from tests.support.servers import free_port
from workers.ray.cluster import private_cluster

TIMINGS: list[tuple[str, int, float, str]] = []


def _cases(tmp_path, s3_endpoint, bucket):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not the checkpoint you pinned")
    out = str(tmp_path / "out")
    s3 = ["--endpoint-url", s3_endpoint]
    nowhere = f"http://127.0.0.1:{free_port()}"

    def job_file(name: str, **fields) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"source": {"uri": str(src)}, "output": out, **fields}))
        return str(path)

    return {
        "missing local source": (
            ["run", "--source", str(tmp_path / "typo"), "--output", out],
            2,
            r"source: .*/typo does not exist; check the path",
        ),
        "missing bucket": (
            ["run", "--source", "s3://no-such-bucket-here/in", "--output", f"s3://{bucket}/out", *s3],
            4,
            r"source: s3://no-such-bucket-here/in/: NoSuchBucket; check the bucket name",
        ),
        "bad credentials": (
            "deny:InvalidAccessKeyId",
            4,
            r"InvalidAccessKeyId; check the credentials in the environment or profile",
        ),
        "access denied": ("deny:AccessDenied", 4, r"AccessDenied; check the credentials' permissions"),
        "unreachable endpoint": (
            ["run", "--source", f"s3://{bucket}/in", "--output", out, "--endpoint-url", nowhere],
            4,
            r"cannot reach http://127\.0\.0\.1:\d+ \(EndpointConnectionError\) after 3 attempts",
        ),
        "wrong checkpoint hash": (
            ["run", job_file("ckpt", model={"checkpoint": str(ckpt), "sha256": "0" * 64})],
            2,
            r"model\.checkpoint: model file .*model\.pt has sha256 [0-9a-f]{64}, but 0{64} was pinned",
        ),
        "missing CLIP weights": (
            ["run", job_file("clip", prompts=["dog"], clip={"weights": str(tmp_path / "w.bin"), "sha256": "a" * 64})],
            2,
            r"clip\.weights: weights file .*w\.bin does not exist; check the path",
        ),
        "bad run id": (["run", "--source", str(src), "--output", out, "--run-id", "../up"], 2, r"run id '\.\./up'"),
        "output inside the source": (
            ["run", "--source", str(src), "--output", str(src)],
            2,
            r"job is not valid: output must differ",
        ),
        "a labelling job naming a reprompt parent": (
            ["run", job_file("parent", reprompt_of="n5")],
            2,
            r"reprompt_of: 'n5' is set by `fastsam-label reprompt` only; remove it to label images, or run "
            r"`fastsam-label reprompt n5 --output OUTPUT --prompt \.\.\.`",
        ),
        "reprompt of a run that does not exist": (
            ["reprompt", "nope", "--output", out, "--prompt", "dog"],
            2,
            r"no run nope under .*; check the run id and --output",
        ),
    }  # fmt: skip


CASES = [
    "missing local source",
    "missing bucket",
    "bad credentials",
    "access denied",
    "unreachable endpoint",
    "wrong checkpoint hash",
    "missing CLIP weights",
    "bad run id",
    "output inside the source",
    "a labelling job naming a reprompt parent",
    "reprompt of a run that does not exist",
]


@pytest.mark.parametrize("case", CASES)
def test_fails_fast_with_one_line(case, tmp_path, s3_endpoint, bucket, capsys):
    argv, code, message = _cases(tmp_path, s3_endpoint, bucket)[case]
    t0 = time.perf_counter()
    if isinstance(argv, str):  # every request answered 403 with this code
        with FaultProxy(s3_endpoint, deny=argv.split(":", 1)[1]) as proxy:
            args = ["run", "--source", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out"]
            got = main([*args, "--endpoint-url", proxy.url])
    else:
        got = main(argv)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    TIMINGS.append((case, got, seconds, lines[-1] if lines else ""))
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err + out, err
    assert re.search(message, lines[0]), lines[0]
    assert "testing" not in err  # the fixture's secret key never appears
    assert seconds < 30


def test_print_the_table(capsys):
    """Prints the table of the cases above (run with -s to see it)."""
    with capsys.disabled():
        print("\n| case | exit | seconds | message |\n|---|---|---|---|")
        for case, code, seconds, line in TIMINGS:
            print(f"| {case} | {code} | {seconds:.2f} | {line[:150]} |")
    assert len(TIMINGS) == len(CASES)


def test_the_private_cluster_refuses_disabled_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with (
        pytest.raises(ClusterSettingError, match="RAY_AUTH_MODE=disabled is set, but the private local Ray cluster"),
        private_cluster(),
    ):
        pass
