"""The streaming planner: shard lists written as the listing fills them, handed out in order, resumed after a stop."""

import threading
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from schemas import RunLayout, parse_job
from schemas.errors import RunMismatchError, StoreUnavailableError, UnorderedListingError
from schemas.fingerprint import labelling_id
from schemas.manifest import Plan
from schemas.tables import IMAGES_SCHEMA
from tests.support.synthetic_run import Listing
from workers import runs
from workers.runs import index
from workers.runs.planner import Planner
from workers.storage import LocalStore, ObjectInfo
from workers.storage.files import parquet_bytes, read_parquet

N = 2_000
FP = {"model.conf": 0.25, "prompts": ["dog"], "source.uri": "s3://cams/"}
OTHER = {**FP, "model.conf": 0.5}


@pytest.fixture(autouse=True)
def small_pages(monkeypatch):
    """Listings yield ten objects at a time (S3 pages hold a thousand): interruptions land between pages."""
    import workers.storage.listings

    monkeypatch.setattr(workers.storage.listings, "BATCH", 10)


def _keys(n: int = N) -> list[str]:
    return [f"cam{i % 3}/frame-{i:06d}.jpg" for i in range(n)]


def _job(tmp_path, shard_size: int = 7):
    data = {"source": {"uri": "s3://cams/"}, "output": str(tmp_path / "out"), "compute": {"shard_size": shard_size}}
    return parse_job(data, environ={})


class Failing(Listing):
    """A listing that fails after `fail_after` objects, recording where each listing started."""

    def __init__(self, uri: str, keys: list[str], fail_after: int | None):
        super().__init__(uri, keys)
        self.fail_after, self.starts = fail_after, []

    def list(self, prefix: str = "", skipped=None, start_after=None):
        self.starts.append(start_after)
        for n, obj in enumerate(super().list(prefix, skipped, start_after)):
            if self.fail_after is not None and n == self.fail_after:
                raise StoreUnavailableError("s3://cams/: SlowDown after 5 attempts")
            yield obj


def _earlier(out: LocalStore, listing: Listing, run_id: str, rows: range, fingerprint: dict, etag_bump=False) -> None:
    """A committed run that labelled listing objects `rows` under `fingerprint` (its plan and index part)."""
    objs = [o for i, o in enumerate(listing.list()) if i in rows]
    n = len(objs)
    images = pa.table(
        {
            **{name: pa.nulls(n, IMAGES_SCHEMA.field(name).type) for name in IMAGES_SCHEMA.names},
            "uri": pa.array([listing.uri_of(o.key) for o in objs]),
            "etag": pa.array([o.etag + ("x" if etag_bump else "") for o in objs]),
            "status": pa.array(["ok"] * n),
        },
        schema=IMAGES_SCHEMA,
    )
    layout = RunLayout(run_id)
    plan = Plan(run_id=run_id, shards=1, objects=n, listed=n, fingerprint=fingerprint, created_at=datetime.now(UTC))
    out.put(layout.plan, plan.model_dump_json().encode())
    index.add_run(out, run_id, [images], labelling_id(fingerprint))
    out.put(layout.success, b"")


def _lists(out: LocalStore, layout: RunLayout, shards: int) -> list[list[ObjectInfo]]:
    return [runs.plan.read_shard_list(out, layout, i) for i in range(shards)]


@pytest.fixture
def history(tmp_path):
    """An output whose index knows objects 0-499 under FP, 500-899 under OTHER, 900-1099 at older ETags."""
    out = LocalStore(tmp_path / "out")
    listing = Listing("s3://cams/", _keys())
    _earlier(out, listing, "a-same", range(0, 500), FP)
    _earlier(out, listing, "b-other", range(500, 900), OTHER)
    _earlier(out, listing, "c-changed", range(900, 1100), FP, etag_bump=True)
    return out


def test_a_resumed_plan_cuts_the_same_shards_and_counts_as_an_uninterrupted_one(tmp_path, history):
    job = _job(tmp_path)
    whole = Planner(job, Listing("s3://cams/", _keys()), history, RunLayout("whole"), FP, "labels", chunk=50).run()
    assert (whole.listed, whole.skipped, whole.new, whole.changed, whole.relabelled) == (N, 500, 900, 200, 400)
    assert whole.objects == 1500 and whole.shards == 215 and whole.relabel_because == ["model.conf"]

    layout = RunLayout("stopped")
    failing = Failing("s3://cams/", _keys(), fail_after=1234)
    first = Planner(job, failing, history, layout, FP, "labels", chunk=50)
    handed: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            handed.extend(first.shard_ids())
        except StoreUnavailableError as e:
            errors.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    with pytest.raises(StoreUnavailableError):
        first.run()
    consumer.join()
    assert len(errors) == 1 and handed == list(range(len(handed))) and len(handed) > 50  # handed out before the end
    assert history.head(layout.plan) is None  # not sealed
    # A list written past a gap (parallel writes) is planned again; so is the one after it.
    history.delete(layout.shard_list(len(handed) - 3))

    resumed_listing = Failing("s3://cams/", _keys(), fail_after=None)
    second = Planner(job, resumed_listing, history, layout, FP, "labels", chunk=50)
    plan = second.run()
    kept = len(handed) - 3
    expected_after = _lists(history, RunLayout("whole"), kept)[-1][-1].key
    assert resumed_listing.starts == [expected_after]  # the listing went on after the last kept list's last key
    assert list(second.shard_ids()) == list(range(whole.shards))
    fields = ("shards", "objects", "listed", "skipped", "new", "changed", "relabelled", "relabel_because")
    assert {f: getattr(plan, f) for f in fields} == {f: getattr(whole, f) for f in fields}
    assert _lists(history, layout, plan.shards) == _lists(history, RunLayout("whole"), whole.shards)


def test_planning_resumed_by_another_job_is_refused(tmp_path):
    out = LocalStore(tmp_path / "out")
    layout = RunLayout("r")
    with pytest.raises(StoreUnavailableError):
        Planner(_job(tmp_path), Failing("s3://cams/", _keys(), fail_after=100), out, layout, FP, chunk=8).run()
    assert runs.load_planning(out, layout).fingerprint == FP
    with pytest.raises(RunMismatchError, match=r"model\.conf: planned 0\.25, now 0\.5"):
        Planner(_job(tmp_path), Listing("s3://cams/", _keys()), out, layout, OTHER).run()


def test_a_listing_out_of_key_order_is_refused_naming_the_keys(tmp_path):
    class Unordered(Listing):
        def list(self, prefix: str = "", skipped=None, start_after=None):
            yield from (ObjectInfo(k, 1, "e") for k in ["b.jpg", "a.jpg"])

    with pytest.raises(UnorderedListingError, match=r"listed 'a\.jpg' after 'b\.jpg': not in key order"):
        runs.plan_run(_job(tmp_path), Unordered("s3://cams/", []), LocalStore(tmp_path / "out"), RunLayout("r"), FP)


def test_lists_carry_their_progress_and_a_list_without_one_is_planned_again(tmp_path):
    out = LocalStore(tmp_path / "out")
    job = _job(tmp_path, shard_size=10)
    layout = RunLayout("r")
    with pytest.raises(StoreUnavailableError):
        Planner(job, Failing("s3://cams/", _keys(100), fail_after=45), out, layout, FP, chunk=8).run()
    assert sorted(o.key for o in out.list(layout.shards_prefix)) == [layout.shard_list(i) for i in range(4)]
    table = read_parquet(out, layout.shard_list(3), "shard")
    progress = runs.planner.PlanProgress.model_validate_json(table.schema.metadata[runs.planner.PROGRESS_KEY])
    assert (progress.through, progress.listed) == (table["key"][-1].as_py(), 40)
    out.put(layout.shard_list(3), parquet_bytes(table.replace_schema_metadata({})))  # as an older planner wrote it
    listing = Failing("s3://cams/", _keys(100), fail_after=None)
    plan = Planner(job, listing, out, layout, FP, chunk=8).run()
    assert listing.starts == [read_parquet(out, layout.shard_list(2), "shard")["key"][-1].as_py()]
    assert (plan.shards, plan.objects) == (10, 100)
    assert [o.key for shard in _lists(out, layout, 10) for o in shard] == sorted(_keys(100))


def test_status_of_a_run_being_planned_counts_the_shard_lists_written_so_far(tmp_path, capsys):
    import json

    from flows.cli import main

    out = LocalStore(tmp_path / "out")
    with pytest.raises(StoreUnavailableError):
        Planner(_job(tmp_path, shard_size=10), Failing("s3://cams/", _keys(100), fail_after=45), out, RunLayout("r"),
                FP, chunk=8).run()  # fmt: skip
    assert main(["status", "r", "--output", str(tmp_path / "out")]) == 1
    got = json.loads(capsys.readouterr().out)
    state = (got["state"], got["shards_planned"], got["shards_done"], got["counts"]["listed"])
    assert state == ("incomplete", 4, 0, 40)
