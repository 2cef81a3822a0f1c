"""`fastsam-label demo`: the whole pipeline offline (flows.demo)."""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    """Run the demo; its exit code is `run`'s."""
    from flows.demo import run_demo

    return run_demo(args.workdir, args.images)
