"""The Delta Lake tables under `{output}/tables/`: every committed run's rows, in the tables consumers read.

    tables/images/       IMAGES_SCHEMA rows + `labelling`, `committed_at`
    tables/masks/        MASKS_SCHEMA rows + `labelling`, `committed_at`
    tables/embeddings/   run_id, image_id, mask_id, embedding (list<float32>) + `labelling`, `committed_at`

A run is appended after its `_SUCCESS`, so a failed or unfinished run never appears; each table gets
one Delta transaction per run, carrying the app transaction `fastsam-label/{run_id}` (Delta's
idempotent-writer id), so publishing a run again (a retry, `fastsam-label tables sync`) appends
nothing. One run is never published by two writers at once: delta-rs 1.6 does not treat a concurrent
commit with the same app transaction as a conflict, so the flows publish while they hold the run's
lease (workers.runs.lease) and `sync` takes each run's lease. Different runs committing at once
both land: delta-rs rebases an append on top of the other (on S3 through conditional PUTs,
`conditional_put: etag`). The images table is written last: a run whose images
rows are there has its masks and embeddings there too, so readers start from images.

Rows are copied, not registered in place: Delta has no fixed-size lists and no float16, so the
run's Parquet cannot be a Delta file as it is (rle_size, bbox and embeddings are cast to
list<int32/float32>); the copy is written as large files whatever the shard size; and the tables
then outlive the run folders, which can expire after commit. Each run streams in shard by shard
(memory does not grow with the run).

`labelling` is the run's labelling fingerprint id (`schemas.fingerprint.labelling_id`) and
`committed_at` its manifest's finish time: the current labels of an image under a labelling
fingerprint are its rows of the latest run with that fingerprint (`docs` and README: "Labels over time").
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Iterator

import pyarrow as pa

from schemas.errors import RunBusyError, StoreUnavailableError
from schemas.fingerprint import labelling_id
from workers.runs.committed import CommittedRun, table_rows
from workers.runs.index import committed_runs
from workers.runs.lease import RunLease
from workers.storage import ObjectStore
from workers.storage.local import LocalStore

log = logging.getLogger(__name__)

#: The tables, in the order a run is appended to them (images last).
DELTA_TABLES = ("embeddings", "masks", "images")
#: Folder of the tables under the output.
TABLES = "tables/"
#: Delta's app transaction id of a run (`DeltaTable.transaction_version`).
APP_ID = "fastsam-label/{run_id}"


def location(output: ObjectStore, name: str) -> tuple[str, dict[str, str]]:
    """(table URI, delta-rs storage options) of table `name` under `output`.

    On S3 the options carry the credentials boto3 resolves for the job's storage settings (in memory
    only), the endpoint and region, and conditional-put commits.
    """
    if isinstance(output, LocalStore):
        return str(output.root / TABLES / name), {}
    import boto3

    s = output.storage
    session = boto3.session.Session(profile_name=s.profile, region_name=s.region)
    options = {"conditional_put": "etag", "AWS_REGION": session.region_name or "us-east-1"}
    creds = session.get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        options.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    if s.endpoint_url:
        options["AWS_ENDPOINT_URL"] = s.endpoint_url
        if s.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return output.uri_of(TABLES + name), options


def delta_type(t: pa.DataType) -> pa.DataType:
    """The Delta-representable type of a run table's column: fixed-size lists become lists, float16 float32."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return pa.list_(delta_type(t.value_type))
    if pa.types.is_float16(t):
        return pa.float32()
    return t


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """A run table's schema as its Delta table holds it (`delta_type`, plus `labelling` and `committed_at`)."""
    fields = [pa.field(f.name, delta_type(f.type), f.nullable) for f in schema]
    fields += [pa.field("labelling", pa.string(), False), pa.field("committed_at", pa.timestamp("us", "UTC"), False)]
    return pa.schema(fields)


def _rows_of(run: CommittedRun, name: str) -> pa.RecordBatchReader:
    """The run's rows of table `name` in its Delta schema (`delta_schema`), read shard by shard.

    The schema is the first shard's (an empty run's is the images table's), taken from the table that
    is read anyway.
    """
    from schemas.tables import IMAGES_SCHEMA

    labelling = labelling_id(run.manifest.fingerprint)
    at = run.manifest.finished_at
    tables = (run.table(name, state) for state in run.states)
    first = next(tables, None)
    schema = delta_schema(first.schema if first is not None else IMAGES_SCHEMA)

    def batches() -> Iterator[pa.RecordBatch]:
        for t in itertools.chain([first] if first is not None else [], tables):
            n = t.num_rows
            cols = [t[f.name].cast(f.type) for f in schema if f.name in t.column_names]
            cols += [pa.array([labelling] * n, pa.string()), pa.array([at] * n, pa.timestamp("us", "UTC"))]
            yield from pa.table(cols, schema=schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def published(output: ObjectStore, run_id: str) -> bool:
    """Whether the run is in the tables (its images rows were appended)."""
    uri, options = location(output, "images")
    return _has_transaction(uri, options, APP_ID.format(run_id=run_id))


def _has_transaction(uri: str, options: dict[str, str], app: str) -> bool:
    """Whether the Delta table at `uri` exists and holds app transaction `app`."""
    table = open_table(uri, options)
    return table is not None and table.transaction_version(app) is not None


def open_table(uri: str, options: dict[str, str]):
    """The Delta table at `uri` (a deltalake.DeltaTable), or None when there is none yet.

    (`DeltaTable.is_deltatable` is not used: it holds the GIL while it waits for the store.)
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    except OSError as e:
        raise StoreUnavailableError(
            f"the Delta table {uri} cannot be read ({e}); check the store and try again"
        ) from None


def publish_run(output: ObjectStore, run_id: str) -> dict[str, int]:
    """Append a committed run to the tables, once; rows appended per table (0 where it was already there).

    Raises:
        RunNotCommittedError, RunNotFoundError, RunDamagedError: the run cannot be read as committed.
        StoreUnavailableError: a table could not be written (the run stays committed; publish again).
    """
    run = CommittedRun(output, run_id)
    appended: dict[str, int] = {}
    for name in DELTA_TABLES:
        if name not in run.tables or (name != "images" and len(run.states) == 0):
            continue  # (an empty run still gets its images transaction: it is published)
        appended[name] = _append(output, run, name)
    log.info("tables: run %s appended (%s)", run_id, appended)
    return appended


def _append(output: ObjectStore, run: CommittedRun, name: str) -> int:
    """Append the run to table `name` unless it is there; the rows appended.

    delta-rs rebases an append that lost to another run's; a commit that loses the table's creation
    is tried again from the start, after looking for the run.
    """
    from deltalake import CommitProperties, Transaction, write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    run_id = run.layout.run_id
    app = APP_ID.format(run_id=run_id)
    uri, options = location(output, name)
    commit = CommitProperties(custom_metadata={"fastsam_label.run_id": run_id},
                              app_transactions=[Transaction(app_id=app, version=1)])  # fmt: skip
    for attempt in range(_COMMIT_TRIES):
        if _has_transaction(uri, options, app):
            return 0
        try:
            write_deltalake(
                uri,
                _rows_of(run, name),
                mode="append",
                schema_mode="merge",
                storage_options=options,
                commit_properties=commit,
            )
            return sum(table_rows(state, name) for state in run.states)
        except CommitFailedError as e:  # another writer committed first: look again
            last: Exception = e
            time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))
        except (DeltaError, OSError) as e:
            last = e
            break
    raise StoreUnavailableError(
        f"run {run_id} is committed but could not be added to {uri} ({type(last).__name__}: {last}); "
        f"run `fastsam-label tables sync --output {output.uri}` once the store is reachable"
    )


#: Tries of one table append that keeps losing commit races.
_COMMIT_TRIES = 8


def sync(output: ObjectStore) -> list[str]:
    """Publish every committed run under `output` that is not in the tables yet (oldest first); the runs published.

    What heals the tables after a commit that could not reach them. A run a flow holds is left to it.
    """
    pending = []
    for run_id in committed_runs(output):
        if not published(output, run_id):
            pending.append(CommittedRun(output, run_id))
    pending.sort(key=lambda r: r.manifest.finished_at)
    done = []
    for run in pending:
        try:
            with RunLease(output, run.layout):  # one publisher per run (see the module docstring)
                publish_run(output, run.layout.run_id)
        except RunBusyError:  # a flow holds the run: it publishes it
            log.info("tables: run %s is held by a flow, which publishes it", run.layout.run_id)
            continue
        done.append(run.layout.run_id)
    return done


def optimize(output: ObjectStore, target_size: int = 256 * 2**20) -> dict[str, dict]:
    """Compact each table's small files into files of about `target_size` bytes (a new version; readers unaffected).

    Returns delta-rs's metrics per table. Old files stay until `vacuum`.
    """
    out = {}
    for name in DELTA_TABLES:
        table = open_table(*location(output, name))
        if table is not None:
            out[name] = table.optimize.compact(target_size=target_size)
    return out


def vacuum(output: ObjectStore, retention_hours: int = 168, dry_run: bool = False) -> dict[str, list[str]]:
    """Delete files no version younger than `retention_hours` reads (time travel stops there); per table, the files.

    The default keeps a week of versions, Delta's own default.
    """
    out = {}
    for name in DELTA_TABLES:
        table = open_table(*location(output, name))
        if table is not None:
            out[name] = table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
    return out
