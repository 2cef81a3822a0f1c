"""A run's shard states in summaries.parquet: written in order, read back a row group at a time, exactly."""

from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from schemas.errors import RunDamagedError
from schemas.manifest import ShardState, ShardSummary
from schemas.stats import MaskStats
from schemas.tables import RUN_KEY
from workers.runs import summaries
from workers.runs.summaries import ShardStates, SummariesWriter


def _state(i: int) -> ShardState:
    summary = ShardSummary(
        run_id="r", shard_id=i, attempt_id=f"a{i}", objects=i, labelled=i // 2, masks=3 * i, prompts=i % 3,
        errors_by_kind={"decode_error": i % 2} if i % 2 else {}, stage_seconds={"read": i / 7}, seconds=i / 3,
        models={"fastsam": ["f" * 64]}, mask_stats=MaskStats(labels={"dog": i}), worker=f"host:{i}",
    )  # fmt: skip
    return ShardState(shard_id=i, attempt_id=f"a{i}", summary=summary)


@pytest.mark.parametrize("n", [0, 1, 4, 5, 11])
def test_states_round_trip_across_row_groups(tmp_path, monkeypatch, n):
    monkeypatch.setattr(summaries, "ROW_GROUP", 4)
    writer = SummariesWriter("r", tmp_path)
    for i in range(n):
        writer.add(_state(i))
    path = writer.close()
    f = pq.ParquetFile(path)
    assert f.num_row_groups == (n + 3) // 4 and f.schema_arrow.metadata[RUN_KEY] == b"r"
    table = f.read()
    assert table["masks"].to_pylist() == [3 * i for i in range(n)] and table["seconds"].to_pylist() == [
        i / 3 for i in range(n)
    ]
    states = ShardStates.local(path, n, "summaries.parquet")
    assert len(states) == n and list(states) == [_state(i) for i in range(n)]
    order = [(7 * i) % n for i in range(3 * n)] if n else []  # jumps between row groups, from 4 threads
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda i: states[i], order)) == [_state(i) for i in order]
    with pytest.raises(IndexError, match=rf"shard {n} is not in the run"):
        states[n]


def test_states_must_come_in_shard_order(tmp_path):
    writer = SummariesWriter("r", tmp_path)
    writer.add(_state(0))
    with pytest.raises(ValueError, match="expected shard 1, got 2"):
        writer.add(_state(2))


def test_a_row_group_of_the_wrong_size_is_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(summaries, "ROW_GROUP", 4)
    writer = SummariesWriter("r", tmp_path)
    for i in range(6):
        writer.add(_state(i))
    table = pq.read_table(writer.close())
    pq.write_table(table, tmp_path / "odd.parquet", row_group_size=3)  # same rows, other grouping
    states = ShardStates.local(tmp_path / "odd.parquet", 6, "odd.parquet")
    with pytest.raises(RunDamagedError, match=r"odd\.parquet: row group 0 holds 3 shards, not 4"):
        list(states)
