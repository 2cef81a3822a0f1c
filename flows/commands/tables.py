"""`fastsam-label tables sync|optimize|vacuum --output URI`: keep the Delta tables under {output}/tables/."""

from __future__ import annotations

import argparse
import json

from schemas.job import StorageSpec
from workers.storage import open_store
from workers.tables import delta


def main(args: argparse.Namespace) -> int:
    """sync: append committed runs missing from the tables; optimize: compact small files; vacuum: drop old files."""
    output = open_store(args.output, StorageSpec(endpoint_url=args.endpoint_url))
    if args.action == "sync":
        done = delta.sync(output)
        print(json.dumps({"published": done}))
    elif args.action == "optimize":
        metrics = delta.optimize(output)
        print(
            json.dumps(
                {name: {k: m.get(k) for k in ("numFilesAdded", "numFilesRemoved")} for name, m in metrics.items()}
            )
        )
    else:
        removed = delta.vacuum(output, retention_hours=args.retention_hours, dry_run=args.dry_run)
        print(json.dumps({name: len(files) for name, files in removed.items()}))
    return 0
