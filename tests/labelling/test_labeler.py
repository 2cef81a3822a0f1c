"""The Labeler called directly, on a loopback S3 endpoint, over the bad-input corpus."""

import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from fastsam_core import TINY_CHECKPOINT, EverythingParams, FastSAMModel, Segmenter
from schemas import RunLayout, check_table, parse_job
from tests.support.corpus import MAX_BYTES, corpus
from tests.support.helpers import dense_mask, plan_for, scene_bytes
from workers.labelling.decode import decode_image
from workers.labelling.labeler import Labeler
from workers.ray.raydata import BatchLabeler
from workers.runs import attempts
from workers.runs.plan import read_shard_list
from workers.storage import open_store

RUN = "run-1"
LAYOUT = RunLayout(RUN)
PROMPTS = ["red", "blue", "green"]
TIMING = ["read_ms", "decode_ms", "segment_ms", "score_ms"]
GONE = "bad/gone before read.jpg"
CHANGED = "good/scene.bmp"  # replaced after planning: the row records what was read


def _table(client, bucket, key, name):
    t = pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    check_table(t, name)
    return t


def _read_all(client, bucket, name):
    keys = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"out/runs/{RUN}/{name}/").get("Contents", [])
    )
    return pa.concat_tables([_table(client, bucket, k, name) for k in keys]) if keys else None


@pytest.fixture(scope="module")
def labelled(s3_endpoint):
    """The corpus (plus an object deleted after planning) labelled on S3 in shards of 5."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = "labeler-corpus"
    client.create_bucket(Bucket=bucket)
    objects = corpus()
    for key, (data, _) in objects.items():
        client.put_object(Bucket=bucket, Key=f"src/{key}", Body=data)
    client.put_object(Bucket=bucket, Key=f"src/{GONE}", Body=objects["good/plain scene.jpg"][0])
    client.put_object(Bucket=bucket, Key="src/notes.txt", Body=b"not listed: wrong extension")
    sidecar = [
        {"key": "good/plain scene.jpg", "prompt_id": "p-fg", "points": [[60.0, 60.0], [120.0, 90.0]]},
        {"key": "good/plain scene.jpg", "prompt_id": "b-1", "box": [10.0, 10.0, 100.0, 100.0]},
        {"key": "good/plain scene.jpg", "prompt_id": "b-out", "box": [5000.0, 5000.0, 5100.0, 5100.0]},
        {"key": "modes/gray.png", "points": [[1.0, 1.0]], "point_labels": [0]},
    ]
    client.put_object(Bucket=bucket, Key="prompts.jsonl", Body="\n".join(json.dumps(r) for r in sidecar).encode())
    job = parse_job(
        {
            "source": {"uri": f"s3://{bucket}/src"},
            "output": f"s3://{bucket}/out",
            "prompts": PROMPTS,
            "negative_prompts": ["gray"],
            "prompt_table": f"s3://{bucket}/prompts.jsonl",
            "clip": {"arch": "color-words", "min_area": 50},
            "limits": {"max_bytes": MAX_BYTES},
            "compute": {"shard_size": 5, "batch_size": 3, "read_threads": 3, "prefetch": 4},
            "storage": {"endpoint_url": s3_endpoint},
        },
        environ={},
    )
    plan = plan_for(job, RUN)
    output = open_store(job.output, job.storage)
    shards = [read_shard_list(output, LAYOUT, i) for i in range(plan.shards)]
    client.delete_object(Bucket=bucket, Key=f"src/{GONE}")
    client.put_object(Bucket=bucket, Key=f"src/{CHANGED}", Body=scene_bytes(77, fmt="BMP"))
    labeler = Labeler(job)
    summaries = [labeler.label_shard(RUN, i) for i in range(len(shards))]
    expected = {k: s for k, (_, s) in objects.items()} | {GONE: "read_error"}
    return {
        "client": client,
        "bucket": bucket,
        "job": job,
        "labeler": labeler,
        "summaries": summaries,
        "expected": expected,
        "images": _read_all(client, bucket, "images"),
        "masks": _read_all(client, bucket, "masks"),
        "prompts": _read_all(client, bucket, "prompts"),
        "listed": {o.key: o for objs in shards for o in objs},
    }


def test_every_object_once_with_the_right_status(labelled):
    images = labelled["images"].to_pylist()
    keys = [r["key"] for r in images]
    assert sorted(keys) == sorted(labelled["expected"]) and len(set(keys)) == len(keys)
    for r in images:
        assert r["status"] == labelled["expected"][r["key"]], (r["key"], r["error"])
        assert r["uri"] == f"s3://{labelled['bucket']}/src/{r['key']}"
        if r["status"] == "ok":
            assert r["error"] is None and r["width"] > 0 and r["mask_count"] >= 0
            # The small model knows coloured shapes; the grey and 16-bit (one channel) scenes may have none.
            assert r["mask_count"] >= 1 or r["key"] in ("modes/gray.png", "modes/sixteen-bit.png")
        else:
            assert r["key"] in r["error"] and r["mask_count"] is None
    by_key = {r["key"]: r for r in images}
    assert (by_key["modes/exif rotated.jpg"]["width"], by_key["modes/exif rotated.jpg"]["height"]) == (128, 224)
    assert by_key["modes/animated.gif"]["frames"] == 3 and by_key["modes/multipage.tiff"]["frames"] == 2
    s = labelled["summaries"]
    assert sum(x.objects for x in s) == len(images)
    assert sum(x.masks for x in s) == labelled["masks"].num_rows
    errors = {}
    for x in s:
        for k, v in x.errors_by_kind.items():
            errors[k] = errors.get(k, 0) + v
    assert errors == {"decode_error": 3, "unsupported": 2, "too_large": 2, "read_error": 1}


def test_rows_record_the_etag_and_size_that_were_read(labelled):
    client, bucket = labelled["client"], labelled["bucket"]
    by_key = {r["key"]: r for r in labelled["images"].to_pylist()}
    now = client.head_object(Bucket=bucket, Key=f"src/{CHANGED}")
    listed = labelled["listed"][CHANGED]
    assert now["ETag"].strip('"') != listed.etag  # replaced after the plan listed it
    assert (by_key[CHANGED]["etag"], by_key[CHANGED]["size"]) == (now["ETag"].strip('"'), now["ContentLength"])
    gone = labelled["listed"][GONE]  # never read: the listing's values stay
    assert (by_key[GONE]["etag"], by_key[GONE]["size"]) == (gone.etag, gone.size)


def test_rles_equal_fastsam_core_run_directly(labelled):
    """Every RLE, decoded by pycocotools, equals fastsam_core's mask for the same image."""
    job, client, bucket = labelled["job"], labelled["client"], labelled["bucket"]
    model = FastSAMModel.load(TINY_CHECKPOINT)
    segment = Segmenter(model, EverythingParams(imgsz=model.default_imgsz, conf=job.model.conf, iou=job.model.iou))
    masks = labelled["masks"].to_pylist()
    checked = 0
    for img in labelled["images"].to_pylist():
        if img["status"] != "ok":
            continue
        data = client.get_object(Bucket=bucket, Key=f"src/{img['key']}")["Body"].read()
        direct = segment([decode_image(data, img["key"], 10**8).rgb])[0]
        rows = sorted((m for m in masks if m["image_id"] == img["image_id"]), key=lambda m: m["mask_id"])
        assert len(rows) == len(direct) == img["mask_count"]
        for m, rle in zip(rows, direct.rles, strict=True):
            ours = mask_utils.decode({"size": m["rle_size"], "counts": m["rle_counts"].encode()})
            np.testing.assert_array_equal(ours, mask_utils.decode(rle))
            assert m["rle_size"] == [img["height"], img["width"]]
            assert m["area"] == int(ours.sum())
            np.testing.assert_allclose(m["bbox"], mask_utils.toBbox(rle), atol=1e-4)
            checked += 1
    assert checked > 20


def test_clip_scores_and_labels_follow_the_prompt_list(labelled):
    masks = labelled["masks"].to_pylist()
    prompts = [*PROMPTS, "gray"]
    scored = [m for m in masks if m["clip_cosine"] is not None]
    assert scored and all(len(m["clip_cosine"]) == len(m["clip_prob"]) == len(prompts) for m in scored)
    assert all(m["clip_cosine"] is None for m in masks if m["area"] <= 50)
    labelled_rows = [m for m in masks if m["label"] is not None]
    assert labelled_rows
    for m in labelled_rows:
        assert m["label"] == prompts[m["label_index"]] and m["label_index"] < len(PROMPTS)
        assert m["label_score"] == pytest.approx(m["clip_prob"][m["label_index"]])
        assert m["label_score"] >= labelled["job"].selection.threshold


def test_sidecar_prompts_record_what_they_selected(labelled):
    images = {r["key"]: r for r in labelled["images"].to_pylist()}
    prompts = {(r["image_id"], r["prompt_id"]): r for r in labelled["prompts"].to_pylist()}
    assert len(prompts) == 4
    scene = images["good/plain scene.jpg"]["image_id"]
    masks = {m["mask_id"]: m for m in labelled["masks"].to_pylist() if m["image_id"] == scene}
    dense = {i: dense_mask(m) for i, m in masks.items()}
    p = prompts[(scene, "p-fg")]
    holding = sorted(i for i, d in dense.items() if d[60, 60] or d[90, 120])
    assert p["kind"] == "points" and sorted(p["mask_ids"]) == holding
    if holding:
        merged = dense_mask(p)
        assert merged.sum() > 0
    b = prompts[(scene, "b-1")]
    assert b["kind"] == "box" and len(b["mask_ids"]) == 1

    def iou(m):
        x, y, w, h = m["bbox"]
        iw, ih = max(min(100, x + w) - max(10, x), 0), max(min(100, y + h) - max(10, y), 0)
        return iw * ih / (90 * 90 + w * h - iw * ih)

    best = max(masks.values(), key=iou)
    assert b["mask_ids"] == [best["mask_id"]] and b["iou"] == pytest.approx(iou(best), abs=1e-5)
    assert b["rle_counts"] == best["rle_counts"]
    out = prompts[(scene, "b-out")]
    assert out["mask_ids"] == [] and out["rle_counts"] is None
    bg_only = prompts[(images["modes/gray.png"]["image_id"], "3")]  # default id: the row number
    assert bg_only["mask_ids"] == [] and bg_only["rle_counts"] is None


def test_a_repeated_shard_writes_nothing_and_returns_the_done_summary(labelled):
    client, bucket = labelled["client"], labelled["bucket"]

    def listing():
        return sorted((o["Key"], o["ETag"]) for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])

    before = listing()
    assert labelled["labeler"].label_shard(RUN, 1) == labelled["summaries"][1]
    assert listing() == before


def test_outputs_stay_under_the_output_prefix(labelled):
    client, bucket = labelled["client"], labelled["bucket"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    written = [k for k in keys if not k.startswith("src/") and k != "prompts.jsonl"]
    assert written and all(k.startswith(f"out/runs/{RUN}/") for k in written)
    n = len(labelled["summaries"])
    for kind in ("images", "masks", "prompts", "shards", "done"):
        assert sum(k.startswith(f"out/runs/{RUN}/{kind}/") for k in written) == n
    output = open_store(labelled["job"].output, labelled["job"].storage)
    marker = attempts.read_marker(output, LAYOUT, 0)
    assert marker.summary == labelled["summaries"][0] and marker.attempt_id == marker.summary.attempt_id
    for name, f in marker.files.items():  # published, and the footer names the marker's attempt
        assert f.key == LAYOUT.table(name, 0) and attempts.published_attempt(output, f.key) == marker.attempt_id
    assert attempts.read_marker(output, LAYOUT, 99) is None


def test_a_failing_image_becomes_a_label_error_row(labelled, monkeypatch):
    labeler = labelled["labeler"]
    output = labeler.output
    objs = read_shard_list(output, LAYOUT, 2)
    real = labeler.stack.segmenter

    class Flaky:
        model = real.model

        def __call__(self, images):
            if any(im.shape[:2] == (224, 128) for im in images):
                raise RuntimeError("simulated kernel failure")
            return real(images)

    monkeypatch.setattr(labeler.stack, "segmenter", Flaky())
    results = labeler.label_results(objs)
    assert [r.key for r in results] == [o.key for o in objs]
    statuses = {r.key: r.status for r in results}
    assert statuses.pop("modes/exif rotated.jpg") == "label_error"
    assert all(s == labelled["expected"][k] for k, s in statuses.items())
    bad = next(r for r in results if r.status == "label_error")
    assert "exif rotated.jpg" in bad.error and "simulated kernel failure" in bad.error


def test_ray_data_callable_returns_one_row_per_image(labelled):
    client, bucket = labelled["client"], labelled["bucket"]
    keys = ["good/plain scene.jpg", "bad/text named.jpg", "modes/gray.png"]
    data = [client.get_object(Bucket=bucket, Key=f"src/{k}")["Body"].read() for k in keys]
    batch = {"bytes": np.array(data, dtype=object), "path": np.array(keys, dtype=object)}
    ray_data = BatchLabeler(labelled["job"], stack=labelled["labeler"].stack)
    out = ray_data(batch)
    rows = out.to_pylist()
    assert [r["key"] for r in rows] == keys
    assert [r["status"] for r in rows] == ["ok", "unsupported", "ok"]
    assert rows[1]["masks"] is None
    scene_id = next(r["image_id"] for r in labelled["images"].to_pylist() if r["key"] == keys[0])
    shard_masks = [m for m in labelled["masks"].to_pylist() if m["image_id"] == scene_id]
    assert [m["rle_counts"] for m in rows[0]["masks"]] == [m["rle_counts"] for m in shard_masks]
    decoded = {"image": np.array([decode_image(data[2], "g", 10**8).rgb], dtype=object)}
    from_arrays = ray_data(decoded).to_pylist()
    assert [m["rle_counts"] for m in from_arrays[0]["masks"]] == [m["rle_counts"] for m in rows[2]["masks"]]
    with pytest.raises(ValueError, match="'bytes' or an 'image' column"):
        ray_data({"path": np.array(["x"])})


def test_a_one_pixel_read_ahead_budget_labels_the_same(labelled):
    """Every image decoded alone (the budget is smaller than any image): same rows, no deadlock."""
    job = labelled["job"]
    tight = job.model_copy(update={"compute": job.compute.model_copy(update={"read_ahead_pixels": 1})})
    objs = read_shard_list(labelled["labeler"].output, LAYOUT, 1)
    part = Labeler(tight).label_objects(LAYOUT, 1, objs)
    published = _table(labelled["client"], labelled["bucket"], f"out/runs/{RUN}/masks/shard-00001.parquet", "masks")
    assert part.masks.equals(published.replace_schema_metadata(part.masks.schema.metadata))
