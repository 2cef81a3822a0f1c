"""The labelling fingerprint, incremental modes, and plans written before modes existed."""

from datetime import UTC, datetime

import pytest

from schemas import parse_job
from schemas.errors import JobError
from schemas.fingerprint import InputHashes, fingerprint, labelling, labelling_id
from schemas.job import incremental_mode
from schemas.manifest import Plan


def _fp(**fields):
    data = {"source": {"uri": "s3://b/in"}, "output": "s3://b/out", "prompts": ["dog"], "clip": {"arch": "color-words"}}
    data.update(fields)
    return fingerprint(parse_job(data, environ={}), InputHashes(model="a" * 64))


def test_the_labelling_fingerprint_follows_labels_not_where_or_how_much():
    base = labelling_id(_fp())
    assert labelling_id(_fp(source={"uri": "s3://b/elsewhere", "include": ["x/**"]})) == base
    assert labelling_id(_fp(limits={"max_pixels": 1000})) == base
    assert labelling_id(_fp(clip={"arch": "color-words", "keep_embeddings": True})) == base
    assert labelling_id(_fp(compute={"num_actors": 8})) == base
    for changed in ({"model": {"conf": 0.3}}, {"prompts": ["dog", "cat"]}, {"negative_prompts": ["sky"]},
                    {"selection": {"mode": "best"}}, {"clip": {"arch": "color-words", "min_area": 5}}):  # fmt: skip
        assert labelling_id(_fp(**changed)) != base, changed
    assert "source.uri" not in labelling(_fp()) and labelling(_fp())["prompts"] == ["dog"]
    # a reprompt's fingerprint names its parent; its labelling fingerprint is a full run's
    assert labelling_id(_fp(reprompt_of="n1")) == base and _fp(reprompt_of="n1")["reprompt.parent"] == "n1"


def test_incremental_modes_and_plans_from_before_them():
    assert [incremental_mode(v) for v in (None, False, True, "labels", "source", "off")] == [
        "off", "off", "labels", "labels", "source", "off"
    ]  # fmt: skip
    with pytest.raises(JobError, match="incremental must be one of off, labels, source, but got 'sometimes'"):
        incremental_mode("sometimes")
    old = {"run_id": "r", "shards": 0, "objects": 0, "listed": 0, "fingerprint": {}, "created_at": datetime.now(UTC)}
    assert Plan(**old, incremental=True).incremental == "source"  # what `true` meant then
    assert Plan(**old, incremental=False).incremental == "off"
    assert Plan(**old).incremental_line() is None
    line = Plan(**old, incremental="labels", new=3, changed=1, relabelled=2, skipped=5,
                relabel_because=["model.sha256"]).incremental_line()  # fmt: skip
    assert line == (
        "incremental (labels): 3 new, 1 changed, 2 labelled under other settings (model.sha256 differ): "
        "relabelling; 5 unchanged skipped"
    )
