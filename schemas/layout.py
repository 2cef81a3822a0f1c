"""Where everything lives under a job's output: one place that builds and parses every key.

    runs/{run_id}/lease/{generation:06d}.json       who runs the run now (workers.runs.lease)
    runs/{run_id}/planning.json                     the planning job's fingerprint, created when planning starts
    runs/{run_id}/plan.json                         the sealed plan and the job's fingerprint; created once
    runs/{run_id}/shards/shard-{n:05d}.parquet      a shard's work list (SHARD_SCHEMA)
    runs/{run_id}/{table}/shard-{n:05d}.parquet     a shard's part of the images, masks, prompts, embeddings tables
    runs/{run_id}/done/shard-{n:05d}.json           the shard's marker (ShardMarker); created once
    runs/{run_id}/_attempts/{attempt}/{table}/shard-{n:05d}.parquet   an attempt's tables before publishing
    runs/{run_id}/summaries.parquet                 at commit: one row per shard (SUMMARIES_SCHEMA)
    runs/{run_id}/manifest.json                     at commit
    runs/{run_id}/report.html                       at commit: the run report (workers.outputs.report)
    runs/{run_id}/_SUCCESS                          written last: the run is committed
    index/part-{run_id}.parquet                     objects a committed run labelled (INDEX_SCHEMA)
    index/base-{run_id}.parquet                     parts merged by a compaction
    tables/{images,masks,embeddings}/               the Delta Lake tables of every committed run (workers.tables)

Readers of a run's tables (`pyarrow.dataset.dataset(f"{RUN}/masks")`) see only published files:
attempts live under `_attempts/`, which dataset discovery skips (names starting with "_" or ".").

Keys are built from run ids, shard numbers, attempt ids and table names only, never from a source
key, so nothing a bucket holds can steer an output outside the output prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import LayoutError

#: Output tables written per shard.
TABLES = ("images", "masks", "prompts", "embeddings")
#: Folder of the run folders under the output.
RUNS = "runs/"
#: Folder of the incremental index under the output.
INDEX = "index/"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ATTEMPT = re.compile(r"^[a-z0-9-]{1,64}$")
_SHARD = re.compile(r"^shard-(\d{5,})\.(parquet|json)$")
_INDEX_FILE = re.compile(r"^(part|base)-(.+)\.parquet$")


def check_run_id(run_id: str) -> str:
    """A run id is part of object keys: 1-128 of [A-Za-z0-9._-], starting with a letter or digit."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise LayoutError(
            f"run id {run_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes part of object keys)"
        )
    return run_id


def _shard(shard_id: int) -> str:
    if not isinstance(shard_id, int) or isinstance(shard_id, bool) or shard_id < 0:
        raise LayoutError(f"shard id must be an int >= 0, but got {shard_id!r}")
    return f"shard-{shard_id:05d}"


def parse_shard(key: str) -> int | None:
    """The shard number of a per-shard key (".../shard-00012.json" -> 12), or None for other keys."""
    m = _SHARD.match(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def run_of(key: str) -> str | None:
    """The run id of a key under runs/ ("runs/r1/_SUCCESS" -> "r1"), or None."""
    if not key.startswith(RUNS):
        return None
    run_id = key[len(RUNS) :].split("/", 1)[0]
    return run_id if _RUN_ID.match(run_id) else None


def index_part_key(run_id: str) -> str:
    """The index part written when `run_id` commits."""
    return f"{INDEX}part-{check_run_id(run_id)}.parquet"


def index_base_key(run_id: str) -> str:
    """The compacted index written by the commit of `run_id`."""
    return f"{INDEX}base-{check_run_id(run_id)}.parquet"


def parse_index_key(key: str) -> tuple[str, str] | None:
    """("part" or "base", run id) of an index key, or None for other keys."""
    m = _INDEX_FILE.match(key.removeprefix(INDEX)) if key.startswith(INDEX) else None
    return (m.group(1), m.group(2)) if m and _RUN_ID.match(m.group(2)) else None


@dataclass(frozen=True)
class RunLayout:
    """The keys of one run, relative to the job's output root."""

    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    @property
    def prefix(self) -> str:
        """runs/{run_id}/ (with the slash)."""
        return f"{RUNS}{self.run_id}/"

    @property
    def plan(self) -> str:
        """The plan (schemas.manifest.Plan as JSON), created once."""
        return self.prefix + "plan.json"

    @property
    def planning(self) -> str:
        """The plan being made (schemas.manifest.Planning as JSON), created once when the first shard list is."""
        return self.prefix + "planning.json"

    @property
    def manifest(self) -> str:
        """The manifest (RunManifest as JSON), written at commit."""
        return self.prefix + "manifest.json"

    @property
    def summaries(self) -> str:
        """The shards' summaries (SUMMARIES_SCHEMA Parquet, one row per shard), written at commit."""
        return self.prefix + "summaries.parquet"

    @property
    def report(self) -> str:
        """The run report (self-contained HTML), written at commit."""
        return self.prefix + "report.html"

    @property
    def success(self) -> str:
        """The empty marker written last of all: the run is committed."""
        return self.prefix + "_SUCCESS"

    @property
    def lease_prefix(self) -> str:
        """The folder of the run's leases."""
        return self.prefix + "lease/"

    def lease(self, generation: int) -> str:
        """The lease of one generation; the highest existing generation holds the run."""
        if generation < 0:
            raise LayoutError(f"lease generation must be >= 0, but got {generation}")
        return f"{self.lease_prefix}{generation:06d}.json"

    @staticmethod
    def lease_generation(key: str) -> int | None:
        """The generation of a lease key, or None for other keys."""
        name = key.rsplit("/", 1)[-1]
        return int(name[:-5]) if name.endswith(".json") and name[:-5].isdigit() else None

    def probe(self, token: str) -> str:
        """A throwaway key for the preflight's write check."""
        return f"{self.prefix}_preflight-{token}"

    @property
    def shards_prefix(self) -> str:
        """The folder of the shards' work lists."""
        return self.prefix + "shards/"

    def shard_list(self, shard_id: int) -> str:
        """A shard's work list (SHARD_SCHEMA Parquet), written by the plan."""
        return f"{self.shards_prefix}{_shard(shard_id)}.parquet"

    def table_prefix(self, table: str) -> str:
        """runs/{run_id}/{table}/: the published part files of one table."""
        if table not in TABLES:
            raise LayoutError(f"table must be one of {TABLES}, but got {table!r}")
        return f"{self.prefix}{table}/"

    def table(self, table: str, shard_id: int) -> str:
        """The published part of `table` for one shard."""
        return f"{self.table_prefix(table)}{_shard(shard_id)}.parquet"

    @property
    def attempts_prefix(self) -> str:
        """The folder of every shard attempt's tables before publishing."""
        return self.prefix + "_attempts/"

    def staged(self, attempt_id: str, table: str, shard_id: int) -> str:
        """One attempt's copy of a shard's table, written before the attempt's marker."""
        if not _ATTEMPT.match(attempt_id):
            raise LayoutError(f"attempt id must be 1-64 of [a-z0-9-], but got {attempt_id!r}")
        return f"{self.attempts_prefix}{attempt_id}/{self.table(table, shard_id)[len(self.prefix) :]}"

    @property
    def done_prefix(self) -> str:
        """The folder of the shards' markers."""
        return self.prefix + "done/"

    def done(self, shard_id: int) -> str:
        """The shard's marker: which attempt counts and its files (ShardMarker JSON)."""
        return f"{self.done_prefix}{_shard(shard_id)}.json"
