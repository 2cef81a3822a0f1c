"""Job fields from command-line flags, shared by `run` and `serve`."""

from __future__ import annotations

import argparse


def add_job_flags(p: argparse.ArgumentParser) -> None:
    """The flags that override job fields."""
    p.add_argument("--source", help="s3://bucket/prefix or a folder of images (source.uri)")
    p.add_argument("--output", help="s3://bucket/prefix or a folder for the tables (output)")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    p.add_argument("--negative", action="append", default=[], help="a negative prompt; repeat for several")
    p.add_argument("--num-actors", type=int, help="Labeler actors (compute.num_actors)")
    p.add_argument("--shard-size", type=int, help="objects per shard (compute.shard_size)")
    p.add_argument("--ray-address", help="an existing Ray cluster (compute.ray_address); default: a local one")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (storage.endpoint_url)")


def job_fields(args: argparse.Namespace) -> dict:
    """Job fields set by the flags of `add_job_flags` (fields not given are left out)."""
    fields: dict = {}
    if args.source:
        fields["source"] = {"uri": args.source}
    if args.output:
        fields["output"] = args.output
    if args.prompt:
        fields["prompts"] = args.prompt
    if args.negative:
        fields["negative_prompts"] = args.negative
    given = {"num_actors": args.num_actors, "shard_size": args.shard_size, "ray_address": args.ray_address}
    compute = {k: v for k, v in given.items() if v is not None}
    if compute:
        fields["compute"] = compute
    if args.endpoint_url:
        fields["storage"] = {"endpoint_url": args.endpoint_url}
    return fields
