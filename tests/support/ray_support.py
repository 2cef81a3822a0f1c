"""Helpers for the Ray tests: a source bucket of synthetic scenes, planning, and reading tables back."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator

import boto3
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import Job, parse_job
from tests.support.helpers import plan_for, scene_bytes
from workers.storage import open_store

TIMING = ["read_ms", "decode_ms", "segment_ms", "score_ms"]


def upload_scenes(endpoint: str, bucket: str, n: int, prefix: str = "src") -> list[str]:
    """n synthetic JPEG scenes (two sizes) under s3://bucket/prefix/; their keys."""
    client = boto3.client("s3", endpoint_url=endpoint)
    keys = []
    for i in range(n):
        h, w = (160, 192) if i % 2 else (200, 160)
        key = f"{prefix}/cam {i % 3}/frame-{i:03d}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=scene_bytes(100 + i, h, w))
        keys.append(key)
    return keys


def make_job(endpoint: str, bucket: str, out: str, **compute) -> Job:
    """A job over s3://bucket/src with the small model and colour-word prompts."""
    return parse_job(
        {
            "source": {"uri": f"s3://{bucket}/src"},
            "output": f"s3://{bucket}/{out}",
            "prompts": ["red", "blue"],
            "clip": {"arch": "color-words"},
            "compute": {"batch_size": 2, "read_threads": 2, **compute},
            "storage": {"endpoint_url": endpoint},
        },
        environ={},
    )


def plan(job: Job, run_id: str) -> int:
    """Plan the run as the flow does; the number of shards."""
    return plan_for(job, run_id).shards


def read_table(job: Job, run_id: str, name: str) -> pa.Table:
    """All shards of one output table, in shard order, without the timing columns."""
    store = open_store(job.output, job.storage)
    keys = [o.key for o in store.list(f"runs/{run_id}/{name}/")]
    table = pa.concat_tables([pq.read_table(io.BytesIO(store.get(k))) for k in keys])
    return table.drop_columns([c for c in TIMING if c in table.column_names])


class _FirstRead(logging.Handler):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if f"GET /{self.prefix}" in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def first_read(prefix: str) -> Iterator[threading.Event]:
    """An event set when the loopback S3 server (moto) serves the first GET under bucket/prefix."""
    werkzeug = logging.getLogger("werkzeug")
    handler = _FirstRead(prefix)
    level = werkzeug.level
    werkzeug.addHandler(handler)
    werkzeug.setLevel(logging.INFO)
    try:
        yield handler.event
    finally:
        werkzeug.removeHandler(handler)
        werkzeug.setLevel(level)


def map_in_background(pool, run_id: str, n: int) -> tuple[threading.Thread, dict]:
    """Start `pool.map(run_id, range(n))` in a thread; the thread and the dict its results fill."""
    results: dict = {}
    thread = threading.Thread(target=lambda: results.update(pool.map(run_id, range(n))))
    thread.start()
    return thread, results
