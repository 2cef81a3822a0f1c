"""schemas: the job configuration (pydantic) and the output tables (pyarrow), versioned.

Imported by every other package; imports none of them.
"""

from schemas.job import Job, JobError, check_run_id, load_job, parse_job
from schemas.manifest import RunManifest, ShardState, ShardSummary
from schemas.tables import (
    ERROR_KINDS,
    IMAGES_SCHEMA,
    MASKS_SCHEMA,
    PROMPTS_SCHEMA,
    SCHEMA_VERSION,
    STATUS_OK,
    SchemaVersionError,
    check_table,
    image_id,
)

__all__ = [
    "ERROR_KINDS",
    "IMAGES_SCHEMA",
    "MASKS_SCHEMA",
    "PROMPTS_SCHEMA",
    "SCHEMA_VERSION",
    "STATUS_OK",
    "Job",
    "JobError",
    "RunManifest",
    "SchemaVersionError",
    "ShardState",
    "ShardSummary",
    "check_run_id",
    "check_table",
    "image_id",
    "load_job",
    "parse_job",
]
