"""Everything that touches bytes, and the Ray side of the pipeline. No Prefect here.

    storage/     object stores (S3, local folders), key checks, Parquet and JSON files, the weights cache
    labelling/   inside an actor: decode, read ahead, the model stack, per-image steps, the Labeler, rows
    runs/        in the driver: plan, lease, the exactly-once commit, the run commit, committed runs, index
    ray/         the cluster, the actor pool, isolating an object that kills actors, Ray Data, the watchdog
    outputs/     the run report and the exports (COCO, CVAT, Label Studio, YOLO)

Imports point one way: storage <- runs <- labelling <- ray, and outputs -> runs (tests/test_layering.py).
"""
