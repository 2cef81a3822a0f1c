"""`fastsam-label demo`: the whole pipeline on a fresh machine, offline, in a few minutes.

A real S3 HTTP endpoint on 127.0.0.1 (moto), sample images uploaded to it (synthetic scenes of
coloured shapes, the two photos that ship inside ultralytics, and two broken files to show error
rows), then the full flow on a local Ray cluster and Prefect's ephemeral server with the shipped
small model and the colour-word stand-in for CLIP. The tables are written to a local folder so
they outlive the demo.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

BUCKET = "fastsam-demo"


def _sample_images(n: int) -> dict[str, bytes]:
    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene

    out = {}
    rng = np.random.default_rng(2026)
    for i in range(n):
        h, w = ((240, 320), (320, 240), (200, 200))[i % 3]
        img, _ = make_scene(rng, h, w, n_shapes=(3, 6))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=92)
        out[f"synthetic/scene-{i:03d}.jpg"] = buf.getvalue()
    try:
        import ultralytics

        assets = Path(ultralytics.__file__).parent / "assets"
        for photo in sorted(assets.glob("*.jpg")):
            out[f"photos/{photo.name}"] = photo.read_bytes()
    except ImportError:
        pass
    out["broken/empty.jpg"] = b""
    out["broken/notes named photo.jpg"] = b"this is a text file\n"
    return out


def run_demo(workdir: Path, n_images: int = 24) -> int:
    """Run the demo; the run's exit code (0 when labelled)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from flows.commands.run import run_job
    from schemas.job_file import parse_job

    workdir = Path(workdir).resolve()
    # The loopback endpoint accepts any credentials; use throwaway ones, never the user's own.
    os.environ.update({"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"})
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://{}:{}".format(*server.get_host_and_port())
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        images = _sample_images(n_images)
        for key, data in images.items():
            s3.put_object(Bucket=BUCKET, Key=f"images/{key}", Body=data)
        print(f"uploaded {len(images)} objects to s3://{BUCKET}/images/ on {endpoint} (loopback S3)")
        job = parse_job(
            {
                "source": {"uri": f"s3://{BUCKET}/images"},
                "output": str(workdir / "labels"),
                "prompts": ["red", "blue", "green", "yellow"],
                "negative_prompts": ["gray"],
                "clip": {"arch": "color-words", "keep_embeddings": True},
                "compute": {"shard_size": 8, "num_actors": 1, "cpus_per_actor": 2, "batch_size": 4},
                "storage": {"endpoint_url": endpoint},
            }
        )
        code, summary = run_job(job, None, False)
    finally:
        server.stop()
    if summary is not None:
        run = workdir / "labels" / "runs" / summary["run_id"]
        print(f"\ntables: {run}/images/ (one row per object) and {run}/masks/ (one row per mask)")
        print(f"manifest: {run}/manifest.json")
        print(f"report: {run}/report.html (open it in a browser)")
        print(f"read them: python -c \"import pyarrow.dataset as ds; print(ds.dataset('{run}/masks').to_table())\"")
        tables = workdir / "labels" / "tables"
        print(f"every committed run, one table each: {tables}/{{images,masks,embeddings}} (Delta Lake):")
        print(f"  python -c \"import polars as pl; print(pl.read_delta('{tables}/masks'))\"")
        print("re-prompt the masks from their stored embeddings, without reading an image:")
        labels = workdir / "labels"
        prompts = "--prompt orange --prompt purple --negative gray"
        print(f"  fastsam-label reprompt {summary['run_id']} --output {labels} {prompts}")
    return code
