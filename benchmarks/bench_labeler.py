"""Labeler throughput on a loopback S3 endpoint: serial reads vs read-ahead and batching, in one run.

    python -m benchmarks.bench_labeler [--images 96] [--size 480x640] [--latency-ms 20]

`--latency-ms` adds a delay to every S3 GET (botocore event hook), standing in for the round trip
to a real bucket, which the loopback endpoint does not have. Prints images/s and per-stage seconds
for each configuration; the ratio is what matters (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--size", default="480x640", help="HxW of the synthetic images")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", action="store_true", help="also score colour-word prompts (the offline stand-in)")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))

    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene
    from schemas import RunLayout, parse_job
    from tests.support.servers import loopback_s3
    from workers.labelling.labeler import Labeler
    from workers.runs.plan import write_shard_list
    from workers.runs.planner import list_source
    from workers.storage import open_store

    fake = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(fake)  # the loopback endpoint accepts any credentials
    server, endpoint, client = loopback_s3("bench")
    for i in range(args.images):
        img, _ = make_scene(np.random.default_rng(i), h, w, n_shapes=(4, 8))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        client.put_object(Bucket="bench", Key=f"src/{i:04d}.jpg", Body=buf.getvalue())

    configs = {
        "1 reader, prefetch 1, batch 1": {"read_threads": 1, "prefetch": 1, "batch_size": 1},
        "4 readers, prefetch 16, batch 8": {"read_threads": 4, "prefetch": 16, "batch_size": 8},
    }
    what = "colour-word prompts" if args.prompts else "no prompts"
    print(f"{args.images} JPEG images {h}x{w}, S3 GET +{args.latency_ms:.0f} ms, small model, {what}, CPU")
    rates = {}
    for k, (name, compute) in enumerate(configs.items()):
        job = parse_job(
            {
                "source": {"uri": "s3://bench/src"},
                "output": "s3://bench/out",
                "prompts": ["red", "blue"] if args.prompts else [],
                "clip": {"arch": "color-words"},
                "compute": {"shard_size": args.images, "cpus_per_actor": 2, **compute},
                "storage": {"endpoint_url": endpoint},
            },
            environ={},
        )
        out = open_store(job.output, job.storage)
        listing = list_source(open_store(job.source.uri, job.storage), job.source)
        assert listing.num_rows == args.images
        labeler = Labeler(job)

        def slow(delay=args.latency_ms / 1000, **_):
            time.sleep(delay)

        labeler.source.client.meta.events.register("before-send.s3.GetObject", slow)
        best = None
        for r in range(args.repeats):
            layout = RunLayout(f"bench-{k}-{r}")  # a fresh run each time: a done shard is not labelled again
            write_shard_list(out, layout, 0, listing)
            s = labeler.label_shard(layout.run_id, 0)
            best = s if best is None or s.seconds < best.seconds else best
        rates[name] = args.images / best.seconds
        stages = ", ".join(f"{k} {v:.2f}" for k, v in best.stage_seconds.items())
        print(f"  {name}: {best.seconds:.2f} s, {rates[name]:.1f} images/s, {best.masks} masks; stage s: {stages}")
    (a, b) = rates.values()
    print(f"4 readers + batching: {b / a:.2f}x the throughput of 1 reader")
    server.stop()


if __name__ == "__main__":
    main()
