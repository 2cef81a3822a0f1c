"""Arrow schemas of the output tables, versioned.

Every Parquet file we write carries two metadata keys: `fastsam_label.table` (images, masks or
prompts) and `fastsam_label.schema_version`. Readers call `check_table` to refuse a file they do
not understand instead of misreading it.

Layout of one run under the output prefix (one file per shard, so a retried shard overwrites):
    runs/{run_id}/shards/{shard:05d}.parquet        the shard's source objects (key, etag, size)
    runs/{run_id}/images/shard-{shard:05d}.parquet  IMAGES_SCHEMA
    runs/{run_id}/masks/shard-{shard:05d}.parquet   MASKS_SCHEMA
    runs/{run_id}/prompts/shard-{shard:05d}.parquet PROMPTS_SCHEMA (only with a prompt table)
    runs/{run_id}/done/shard-{shard:05d}.json       written last: the shard is complete
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

SCHEMA_VERSION = "1"
VERSION_KEY = b"fastsam_label.schema_version"
TABLE_KEY = b"fastsam_label.table"

#: Image statuses: "ok", or the kind of failure.
STATUS_OK = "ok"
ERROR_KINDS = ("read_error", "decode_error", "too_large", "unsupported", "label_error")


def image_id(uri: str) -> str:
    """Stable id of a source object: the same URI gives the same id in every run (32 hex digits)."""
    return hashlib.blake2b(uri.encode("utf-8"), digest_size=16).hexdigest()


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={TABLE_KEY: name.encode(), VERSION_KEY: SCHEMA_VERSION.encode()})


_RLE_SIZE = pa.list_(pa.int32(), 2)

#: One row per source object of the run, failures included.
IMAGES_SCHEMA = _schema(
    "images",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),  # image_id(uri)
        pa.field("uri", pa.string(), nullable=False),  # s3://bucket/key or file:///abs/path
        pa.field("key", pa.string(), nullable=False),  # relative to the source prefix
        pa.field("etag", pa.string()),  # S3 ETag (quotes stripped) or local size-mtime tag
        pa.field("size", pa.int64()),  # bytes, from the listing
        pa.field("status", pa.string(), nullable=False),  # "ok" or one of ERROR_KINDS
        pa.field("error", pa.string()),  # why it failed, naming the object; null when ok
        pa.field("width", pa.int32()),  # pixels after EXIF orientation; null when not decoded
        pa.field("height", pa.int32()),
        pa.field("frames", pa.int32()),  # frames/pages in the file; only the first is labelled
        pa.field("mask_count", pa.int32()),  # masks found; null when not labelled
        pa.field("model_sha256", pa.string(), nullable=False),  # FastSAM checkpoint
        pa.field("clip_model", pa.string()),  # e.g. "open_clip:ViT-B-32"; null without prompts
        pa.field("read_ms", pa.float32()),  # wall milliseconds per stage for this image
        pa.field("decode_ms", pa.float32()),
        pa.field("segment_ms", pa.float32()),  # its share of the batched forward pass + masks
        pa.field("score_ms", pa.float32()),  # CLIP crops + embedding + labels
    ],
)

#: One row per mask.
MASKS_SCHEMA = _schema(
    "masks",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("mask_id", pa.int32(), nullable=False),  # 0..N-1 in score order within the image
        pa.field("rle_size", _RLE_SIZE, nullable=False),  # COCO RLE size [height, width]
        pa.field("rle_counts", pa.string(), nullable=False),  # COCO compressed counts string
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # tight box of the mask, XYWH pixels
        pa.field("area", pa.int64(), nullable=False),  # pixels
        pa.field("score", pa.float32(), nullable=False),  # detector confidence
        pa.field("stability", pa.float32(), nullable=False),  # mask quality in [0, 1]
        pa.field("clip_cosine", pa.list_(pa.float32())),  # per prompt (positives then negatives); null = not scored
        pa.field("clip_prob", pa.list_(pa.float32())),  # softmax over the prompts; null = not scored
        pa.field("label", pa.string()),  # selected prompt, or null
        pa.field("label_index", pa.int16()),  # its index in the run's prompt list, or null
        pa.field("label_score", pa.float32()),  # its probability, or null
    ],
)

#: One row per sidecar point/box prompt.
PROMPTS_SCHEMA = _schema(
    "prompts",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),  # from the prompt table
        pa.field("kind", pa.string(), nullable=False),  # "points" or "box"
        pa.field("mask_ids", pa.list_(pa.int32()), nullable=False),  # masks the prompt selected
        pa.field("rle_size", _RLE_SIZE),  # the answer: merged mask (points) or chosen mask (box)
        pa.field("rle_counts", pa.string()),  # null when nothing was selected
        pa.field("iou", pa.float32()),  # box prompts: IoU of the prompt box and the chosen mask's box
    ],
)

#: One row per source object of a shard: the shard's work list, written by the plan.
SHARD_SCHEMA = _schema(
    "shard",
    [
        pa.field("key", pa.string(), nullable=False),  # relative to the source prefix
        pa.field("size", pa.int64(), nullable=False),  # bytes, from the listing
        pa.field("etag", pa.string()),
    ],
)

SCHEMAS = {"images": IMAGES_SCHEMA, "masks": MASKS_SCHEMA, "prompts": PROMPTS_SCHEMA, "shard": SHARD_SCHEMA}


class SchemaVersionError(ValueError):
    """A table written by a schema this code does not read."""


def check_table(table: pa.Table | pa.Schema, expected: str) -> None:
    """Refuse a table that is not `expected` at this SCHEMA_VERSION.

    Raises:
        SchemaVersionError: naming what was found and what is needed.
    """
    meta = (table.schema if isinstance(table, pa.Table) else table).metadata or {}
    name = meta.get(TABLE_KEY, b"?").decode()
    version = meta.get(VERSION_KEY, b"?").decode()
    if name != expected or version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"expected a {expected!r} table of schema version {SCHEMA_VERSION}, but found {name!r} version "
            f"{version}; read it with the fastsam-label version that wrote it"
        )
