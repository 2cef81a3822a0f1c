"""schemas: the job (pydantic), the documents and tables a run writes (versioned), URIs, layouts and errors.

Imported by every other package; imports none of them.
"""

from schemas.errors import JobError, SchemaVersionError
from schemas.job import Job
from schemas.job_file import load_job, parse_job
from schemas.layout import RunLayout, check_run_id
from schemas.manifest import RunManifest, RunSummary, ShardMarker, ShardState, ShardSummary
from schemas.tables import (
    IMAGES_SCHEMA,
    MASKS_SCHEMA,
    PROMPTS_SCHEMA,
    SCHEMA_VERSION,
    ImageStatus,
    check_table,
    image_id,
)

__all__ = [
    "IMAGES_SCHEMA",
    "MASKS_SCHEMA",
    "PROMPTS_SCHEMA",
    "SCHEMA_VERSION",
    "ImageStatus",
    "Job",
    "JobError",
    "RunLayout",
    "RunManifest",
    "RunSummary",
    "SchemaVersionError",
    "ShardMarker",
    "ShardState",
    "ShardSummary",
    "check_run_id",
    "check_table",
    "image_id",
    "load_job",
    "parse_job",
]
