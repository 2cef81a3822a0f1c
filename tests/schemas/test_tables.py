import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import IMAGES_SCHEMA, MASKS_SCHEMA, SCHEMA_VERSION, check_table, image_id
from schemas.errors import SchemaVersionError


def test_image_id_is_stable_and_distinct():
    assert image_id("s3://b/a.jpg") == image_id("s3://b/a.jpg")
    assert image_id("s3://b/a.jpg") != image_id("s3://b/b.jpg")
    assert len(image_id("s3://b/ü.jpg")) == 32
    # Pinned: ids must not change between releases, or runs could not be joined.
    assert image_id("s3://bucket/images/0001.jpg") == "862d900458fe1d1dcdfb5a2d8e9060bf"


def test_version_travels_through_parquet():
    t = pa.Table.from_pylist([], schema=MASKS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(t, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    check_table(back, "masks")
    with pytest.raises(SchemaVersionError, match="expected a 'images' table"):
        check_table(back, "images")
    old = back.replace_schema_metadata({b"fastsam_label.table": b"masks", b"fastsam_label.schema_version": b"0"})
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION}, but found .masks. version 0"):
        check_table(old, "masks")


def test_tables_hold_the_documented_columns():
    assert {"run_id", "image_id", "uri", "etag", "size", "status", "error", "width", "height", "mask_count"} <= set(
        IMAGES_SCHEMA.names
    )
    assert {"rle_counts", "rle_size", "bbox", "area", "score", "stability", "clip_cosine", "label"} <= set(
        MASKS_SCHEMA.names
    )
