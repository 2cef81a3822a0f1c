"""Arrow schemas of the output tables, versioned.

Every Parquet file we write carries two metadata keys: `fastsam_label.table` (images, masks or
prompts) and `fastsam_label.schema_version`. Readers call `check_table` to refuse a file they do
not understand instead of misreading it.

Each published table part also names the shard attempt that wrote it (`fastsam_label.attempt_id`,
with `fastsam_label.run_id` and `fastsam_label.shard_id`), in the Parquet footer, so a commit can
prove that every part is the one its shard's marker chose. Where the files live: `schemas.layout`.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import pyarrow as pa

from schemas.errors import SchemaVersionError

SCHEMA_VERSION = "1"
VERSION_KEY = b"fastsam_label.schema_version"
TABLE_KEY = b"fastsam_label.table"
#: Footer keys of a published table part: the shard attempt that wrote it.
ATTEMPT_KEY = b"fastsam_label.attempt_id"
RUN_KEY = b"fastsam_label.run_id"
SHARD_KEY = b"fastsam_label.shard_id"


class ImageStatus(StrEnum):
    """The `status` of an images-table row: ok, or the kind of failure."""

    OK = "ok"
    READ_ERROR = "read_error"  # the object could not be fetched (after the store's retries)
    DECODE_ERROR = "decode_error"  # a supported format that does not decode
    TOO_LARGE = "too_large"  # over limits.max_bytes or limits.max_pixels
    UNSUPPORTED = "unsupported"  # not an image, or a format we do not read
    LABEL_ERROR = "label_error"  # segmentation or scoring raised on this image
    WORKER_LOST = "worker_lost"  # its actor died on it twice (out of memory, a crash in native code)

    @property
    def retry_later(self) -> bool:
        """Whether a later incremental run tries the object again (the failure may not repeat)."""
        return self in (ImageStatus.READ_ERROR, ImageStatus.LABEL_ERROR, ImageStatus.WORKER_LOST)


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
        pa.field("etag", pa.string()),  # of the bytes read (S3 ETag, quotes stripped; local size-mtime tag)
        pa.field("size", pa.int64()),  # bytes read (the listing's when the read failed)
        pa.field("status", pa.string(), nullable=False),  # an ImageStatus
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

#: One row per object an earlier committed run labelled for good, under {output}/index/. Index files
#: written before the labelling column existed are read with it filled from their run's plan.
INDEX_SCHEMA = _schema(
    "index",
    [
        pa.field("uri", pa.string(), nullable=False),  # the source object's URI (source prefix + key)
        pa.field("etag", pa.string(), nullable=False),  # the ETag that was read
        pa.field("run_id", pa.string(), nullable=False),  # the run that labelled it
        pa.field("labelling", pa.string(), nullable=False),  # its labelling fingerprint (fingerprint.labelling_id)
    ],
)

#: One row per shard of a committed run, in shard order: runs/{run_id}/summaries.parquet (workers.runs.summaries).
#: The footer names the run (RUN_KEY).
SUMMARIES_SCHEMA = _schema(
    "summaries",
    [
        pa.field("shard_id", pa.int64(), nullable=False),  # 0..n-1, in order
        pa.field("attempt_id", pa.string(), nullable=False),  # the attempt that counts (its marker's)
        pa.field("objects", pa.int64(), nullable=False),  # images-table rows
        pa.field("labelled", pa.int64(), nullable=False),
        pa.field("masks", pa.int64(), nullable=False),  # masks-table rows
        pa.field("prompts", pa.int64(), nullable=False),
        pa.field("embeddings", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),  # wall seconds of the shard
        pa.field("summary", pa.string(), nullable=False),  # the whole ShardSummary as JSON (what readers parse)
    ],
)

#: Schema metadata of an embeddings table: how its vectors are stored.
EMBEDDING_DTYPE_KEY = b"fastsam_label.embedding_dtype"
EMBEDDING_DIM_KEY = b"fastsam_label.embedding_dim"
EMBEDDING_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def embeddings_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    """One row per scored mask: its CLIP image embedding, a unit vector of `dim` values stored as `dtype`.

    The dtype ("float16" or "float32") and the dimension are in the schema metadata
    (EMBEDDING_DTYPE_KEY, EMBEDDING_DIM_KEY) as well as in the column type.
    """
    schema = _schema(
        "embeddings",
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("mask_id", pa.int32(), nullable=False),  # the masks-table row it belongs to
            pa.field("embedding", pa.list_(EMBEDDING_TYPES[dtype], dim), nullable=False),  # L2-normalised
        ],
    )
    return schema.with_metadata(
        {**schema.metadata, EMBEDDING_DTYPE_KEY: dtype.encode(), EMBEDDING_DIM_KEY: str(dim).encode()}
    )


SCHEMAS = {
    "images": IMAGES_SCHEMA,
    "masks": MASKS_SCHEMA,
    "prompts": PROMPTS_SCHEMA,
    "shard": SHARD_SCHEMA,
    "index": INDEX_SCHEMA,
    "summaries": SUMMARIES_SCHEMA,
}


def with_attempt(table: pa.Table, run_id: str, shard_id: int, attempt_id: str) -> pa.Table:
    """The table with the attempt that wrote it in its schema metadata (and so in the Parquet footer)."""
    meta = dict(table.schema.metadata or {})
    meta.update({ATTEMPT_KEY: attempt_id.encode(), RUN_KEY: run_id.encode(), SHARD_KEY: str(shard_id).encode()})
    return table.replace_schema_metadata(meta)


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
