import json
from contextlib import nullcontext as does_not_raise

import pytest
import yaml

from schemas import Job, load_job, parse_job
from schemas.errors import JobError

BASE = {"source": {"uri": "s3://bucket/images"}, "output": "s3://bucket/labels"}


def test_defaults_and_frozen():
    job = parse_job(BASE, environ={})
    assert job.model.conf == 0.4 and job.model.iou == 0.9 and job.model.retina
    assert job.compute.shard_size == 256 and job.prompts == ()
    with pytest.raises(Exception, match="frozen"):
        job.output = "s3://other/x"


@pytest.mark.parametrize(
    "patch, expectation",
    [
        ({}, does_not_raise()),
        ({"model": {"imgsz": 100}}, pytest.raises(JobError, match=r"model\.imgsz: .*multiple of 32.*try 96")),
        (
            {"model": {"conf": 1.5}},
            pytest.raises(JobError, match=r"model\.conf: .*\(0, 1\], but got 1\.5"),
        ),
        ({"model": {"runtime": "onnxruntime", "half": True}}, pytest.raises(JobError, match=r"model: half is not")),
        ({"model": {"runtime": "tensorrt"}}, pytest.raises(JobError, match=r"model\.runtime: .*'torch' or 'onnx")),
        (
            {"model": {"half": True}, "clip": {"runtime": "onnxruntime"}},
            pytest.raises(JobError, match=r"clip\.runtime onnxruntime runs float32, but model\.half asks"),
        ),
        ({"clip": {"runtime": "openvino"}}, pytest.raises(JobError, match=r"clip\.runtime: .*'torch' or 'onnx")),
        ({"model": {"conf": 0}}, pytest.raises(JobError, match=r"model\.conf: conf must be in \(0, 1\], but got 0")),
        ({"model": {"sha256": "abc"}}, pytest.raises(JobError, match=r"model\.sha256: .*64 hex digits.*sha256sum")),
        ({"model": {"sha256": 1234}}, pytest.raises(JobError, match=r"model\.sha256: .*quote it in YAML")),
        ({"source": {"uri": "gs://b/x"}}, pytest.raises(JobError, match=r"source\.uri: .*gs://.*use s3:// or a local")),
        ({"output": "s3:///nobucket"}, pytest.raises(JobError, match=r"output: .*no bucket")),
        ({"prompts": ["cat", "cat"]}, pytest.raises(JobError, match=r"prompts: .*\['cat'\] repeat")),
        (
            {"prompts": ["yellow", " Yellow "], "clip": {"arch": "color-words"}},
            pytest.raises(JobError, match=r"prompts: .*distinct ignoring case.*\['Yellow', 'yellow'\] repeat"),
        ),
        (
            {"prompts": ["red"], "negative_prompts": ["RED"], "clip": {"arch": "color-words"}},
            pytest.raises(JobError, match=r"\['red'\] are both prompts and negative_prompts"),
        ),
        (
            {"prompts": ["red", "Unlabelled"], "clip": {"arch": "color-words"}},
            pytest.raises(JobError, match=r"prompts: 'unlabelled' is the category exports give.*name the prompt"),
        ),
        ({"prompts": ["object"], "clip": {"arch": "color-words"}}, does_not_raise()),
        (
            {"prompts": ["red\nblue"], "clip": {"arch": "color-words"}},
            pytest.raises(JobError, match=r"prompts: prompt 'red\\nblue' holds control characters"),
        ),
        (
            {"prompts": ["a\x07b"], "clip": {"arch": "color-words"}},
            pytest.raises(JobError, match=r"control characters"),
        ),
        ({"source": {"uri": "s3://b/i", "include": ["cams/[a"]}}, does_not_raise()),
        (
            {"source": {"uri": "s3://b/i", "include": [""]}},
            pytest.raises(JobError, match=r"source\.include: .*non-emp"),
        ),
        ({"source": {"uri": "s3://b/i", "include": ["/abs/*.jpg"]}}, pytest.raises(JobError, match=r"relative")),
        ({"prompts": ["cat"]}, pytest.raises(JobError, match=r"clip\.weights is required.*color-words")),
        ({"prompts": ["cat"], "clip": {"arch": "color-words"}}, does_not_raise()),
        ({"negative_prompts": ["x"]}, pytest.raises(JobError, match="without prompts")),
        ({"aws_secret_access_key": "s"}, pytest.raises(JobError, match=r"aws_secret_access_key: unknown field.*never")),
        ({"compute": {"num_actors": 0}}, pytest.raises(JobError, match=r"compute\.num_actors: .*greater than")),
        ({"compute": {"gpus_per_actor": 0.25}}, does_not_raise()),
        ({"source": {"uri": "s3://bucket/labels"}}, pytest.raises(JobError, match="output must differ")),
        ({"model": {"checkpoint": "s3://m/fastsam.pt"}}, pytest.raises(JobError, match=r"model\.sha256 is required")),
        ({"prompt_table": "s3://b/p.csv"}, pytest.raises(JobError, match=r"prompt_table: .*\.parquet or \.jsonl")),
        ({"source": {"uri": "s3://b/i", "extensions": []}}, pytest.raises(JobError, match="nothing would be")),
    ],
)
def test_validation_names_the_field_and_the_fix(patch, expectation):
    data = {**BASE, **patch}
    with expectation:
        assert isinstance(parse_job(data, environ={}), Job)


def test_all_problems_are_reported_at_once():
    with pytest.raises(JobError) as e:
        parse_job({**BASE, "model": {"imgsz": 33, "iou": -1}, "compute": {"batch_size": 0}}, environ={})
    msg = str(e.value)
    assert "(3 problems):" in msg and "model.imgsz" in msg and "model.iou" in msg and "compute.batch_size" in msg


def test_environment_overrides_nested_fields():
    env = {
        "FASTSAM_LABEL__MODEL__IMGSZ": "640",
        "FASTSAM_LABEL__COMPUTE__RAY_ADDRESS": "auto",
        "FASTSAM_LABEL__PROMPTS": "[red circle, blue square]",
        "FASTSAM_LABEL__CLIP__ARCH": "color-words",
        "UNRELATED": "1",
    }
    job = parse_job({**BASE, "model": {"imgsz": 1024, "conf": 0.3}}, environ=env)
    assert job.model.imgsz == 640 and job.model.conf == 0.3  # override merges, keeps siblings
    assert job.compute.ray_address == "auto" and job.prompts == ("red circle", "blue square")


def test_bad_environment_override_is_named():
    with pytest.raises(JobError, match=r"model\.imgsz"):
        parse_job(BASE, environ={"FASTSAM_LABEL__MODEL__IMGSZ": "big"})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_job_from_file_then_fields_then_env(tmp_path, suffix):
    path = tmp_path / f"job{suffix}"
    data = {**BASE, "compute": {"shard_size": 10}}
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    job = load_job(path, environ={"FASTSAM_LABEL__COMPUTE__NUM_ACTORS": "3"}, compute={"batch_size": 2})
    assert (job.compute.shard_size, job.compute.batch_size, job.compute.num_actors) == (10, 2, 3)


@pytest.mark.parametrize(
    "text, match", [("[1, 2]", "must hold a mapping"), ("a: [", "not valid YAML"), ("source: {uri: x}", "output")]
)
def test_load_job_file_errors(tmp_path, text, match):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobError, match=match):
        load_job(path, environ={})


@pytest.mark.parametrize(
    "name, text, match",
    [
        (
            "job.yaml",
            "source: {uri: s3://b/in}\noutput: s3://b/o1\noutput: s3://b/o2\n",
            r"'output' is given twice \(lines 2 and 3\)",
        ),
        ("job.yaml", "source:\n  uri: s3://b/in\n  uri: s3://b/x\noutput: s3://b/o\n", r"'uri' is given twice"),
        (
            "job.json",
            '{"source": {"uri": "s3://b/in"}, "output": "s3://b/o", "output": "s3://b/p"}',
            r"'output' is given twice",
        ),
    ],
)
def test_a_key_given_twice_in_a_job_file_is_refused(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(JobError, match=rf"^job file .*{name}: key {match}.*keep one"):
        load_job(path, environ={})


def test_missing_job_file_is_named(tmp_path):
    with pytest.raises(JobError, match=r"nope\.yaml.*check the path"):
        load_job(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    "pattern, key, wanted",
    [
        ("cams/**/*.jpg", "cams/a.jpg", True),  # ** spans no folder too
        ("cams/**/*.jpg", "cams/d1/d2/a.jpg", True),
        ("cams/**/*.jpg", "other/cams/a.jpg", False),
        ("cams/*.jpg", "cams/a.jpg", True),
        ("cams/*.jpg", "cams/d1/a.jpg", False),  # * stays within one folder
        ("**/*.jpg", "a.jpg", True),
        ("**/*.jpg", "x/y/a.jpg", True),
        ("*.jpg", "x/a.jpg", False),
        ("*.jpg", ".hidden.jpg", True),  # dot-files are ordinary keys in a bucket
        ("cams/a?.jpg", "cams/ab.jpg", True),
        ("cams/a?.jpg", "cams/a/.jpg", False),
        ("cams/[ab].jpg", "cams/b.jpg", True),
        ("cams/*.{jpg,png}", "cams/x.png", True),
        ("cams/**", "cams/x/y/z.jpg", True),
        ("cams/*.jpg", "Cams/a.jpg", False),  # case-sensitive, as S3 keys are
    ],
)
def test_include_has_glob_semantics(pattern, key, wanted):
    job = parse_job({**BASE, "source": {"uri": "s3://b/i", "include": [pattern]}}, environ={})
    assert job.source.wants(key) is wanted


def test_source_filter():
    job = parse_job({**BASE, "source": {"uri": "s3://b/i", "include": ["cams/**"], "extensions": ["JPG", ".png"]}}, {})
    assert job.source.extensions == (".jpg", ".png")
    assert job.source.wants("cams/a/x.JPG") and job.source.wants("cams/y.png")
    assert not job.source.wants("other/x.jpg") and not job.source.wants("cams/x.gif")


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("conf", 0, False),
        ("conf", 1e-9, True),
        ("conf", 1, True),
        ("iou", 0, False),
        ("iou", 1.0001, False),
        ("max_det", 0, False),
        ("max_det", 10_000, True),
        ("max_det", 10_001, False),
        ("imgsz", 32, True),
        ("imgsz", 4096, True),
        ("imgsz", 4128, False),
        ("imgsz", 100, False),
    ],
)
def test_a_job_accepts_exactly_the_everything_params_a_segmenter_runs_with(field, value, ok):
    """One copy of the ranges: a job that validates never fails in the actors (model.conf: 0 once did)."""
    from schemas.params import EverythingParams

    def accepts(make, error):
        try:
            make()
        except error:
            return False
        return True

    runs = accepts(lambda: EverythingParams(**{field: value}), ValueError)
    valid = accepts(lambda: parse_job({**BASE, "model": {field: value}}), JobError)
    assert (runs, valid) == (ok, ok)


@pytest.mark.parametrize(
    "model, runtime",
    [
        ({}, "onnxruntime"),  # auto on the CPU: ONNX Runtime's forward is the faster one there
        ({"device": "cpu", "half": False}, "onnxruntime"),
        ({"device": "cuda"}, "torch"),
        ({"device": "cuda:1", "half": True}, "torch"),
        ({"half": True}, "torch"),  # float16 is torch's
        ({"runtime": "torch"}, "torch"),
        ({"runtime": "onnxruntime", "device": "cuda"}, "onnxruntime"),
    ],
)
def test_the_runtime_auto_resolves_by_device(model, runtime):
    from workers.labelling.stack import resolve_runtime

    job = parse_job({**BASE, "model": model}, environ={})
    assert job.model.runtime == model.get("runtime", "auto")
    assert resolve_runtime(job.model) == runtime


@pytest.mark.parametrize(
    "model, clip, runtime",
    [
        ({}, {}, "onnxruntime"),
        ({"half": True}, {}, "torch"),  # CLIP follows the model's precision
        ({"device": "cuda"}, {}, "torch"),
        ({}, {"runtime": "torch"}, "torch"),
        ({"runtime": "torch"}, {}, "onnxruntime"),  # each network has its own runtime
        ({"device": "cuda"}, {"runtime": "onnxruntime"}, "onnxruntime"),
    ],
)
def test_clip_runtime_auto_resolves_by_the_models_device(model, clip, runtime):
    from workers.labelling.stack import resolve_runtime

    job = parse_job({**BASE, "model": model, "clip": clip}, environ={})
    assert resolve_runtime(job.model, job.clip.runtime) == runtime


def test_a_default_job_runs_onnxruntime_on_the_cpu(tmp_path, monkeypatch):
    from workers.labelling.stack import stack_for

    monkeypatch.setenv("FASTSAM_LABEL_CACHE", str(tmp_path))
    stack = stack_for(parse_job(BASE, environ={}))
    assert stack.segmenter.model.runtime == "onnxruntime"
    assert [p.parent.name for p in tmp_path.glob("**/*.onnx")] == ["onnx"]  # exported into the weights cache
