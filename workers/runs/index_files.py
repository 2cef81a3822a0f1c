"""Index files on local disk, sorted by URI: sorted and merged out of core by DuckDB, read back by URI range.

Every index file the product writes (`index/part-*.parquet`, `index/base-*.parquet`) is sorted by
`uri`, says so in its footer (SORTED_KEY), and is cut into row groups of ROW_GROUP rows whose min/max
statistics bound their URIs. So a planner reads only the row groups a chunk of the listing can
match (`RangeReader`), and a commit sorts its part and merges files (`write_sorted`) without
holding them in memory: DuckDB sorts and groups under SORT_MEMORY, spilling to the folder given.
Files written before they were sorted are sorted on the way (`sorted_copy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.tables import INDEX_SCHEMA

#: Footer key of an index file sorted by URI (its value: b"uri").
SORTED_KEY = b"fastsam_label.sorted_by"
#: Rows per row group of an index file: what a range read reads at least, per file.
ROW_GROUP = 16_384
#: DuckDB's memory limit while it sorts or merges index files (it spills to disk beyond it).
SORT_MEMORY = "256MB"

_SORTED_SCHEMA = INDEX_SCHEMA.with_metadata({**INDEX_SCHEMA.metadata, SORTED_KEY: b"uri"})


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def write_sorted(files: Sequence[Path], dest: Path, spill: Path, merge: bool = False) -> int:
    """Write the rows of INDEX_SCHEMA Parquet `files` to `dest`, sorted by URI (SORTED_KEY, ROW_GROUP rows a group).

    Args:
        files: local index files (the labelling column present).
        dest: the file to write.
        spill: a folder DuckDB may spill to.
        merge: keep one row per (uri, etag, labelling), with the greatest run id (a compaction).

    Returns:
        rows written.
    """
    import duckdb

    con = duckdb.connect(config={"memory_limit": SORT_MEMORY, "temp_directory": str(spill), "threads": 2,
                                 "preserve_insertion_order": False})  # fmt: skip
    try:
        scan = f"read_parquet([{', '.join(_sql_text(str(f)) for f in files)}])"
        if merge:
            query = (f"SELECT uri, etag, max(run_id) AS run_id, labelling FROM {scan} GROUP BY uri, etag, labelling "
                     "ORDER BY uri, labelling, etag")  # fmt: skip
        else:
            query = f"SELECT uri, etag, run_id, labelling FROM {scan} ORDER BY uri, labelling, etag, run_id"
        rows = 0
        with pq.ParquetWriter(dest, _SORTED_SCHEMA, compression="zstd") as writer:
            for batch in con.sql(query).to_arrow_reader(ROW_GROUP):
                table = pa.Table.from_batches([batch]).cast(INDEX_SCHEMA)
                writer.write_table(table, row_group_size=ROW_GROUP)
                rows += table.num_rows
        return rows
    finally:
        con.close()


def is_sorted(path: Path) -> bool:
    """Whether a local index file says it is sorted by URI (written by `write_sorted`)."""
    return (pq.read_metadata(path).metadata or {}).get(SORTED_KEY) == b"uri"


class RangeReader:
    """The rows of sorted local index files whose URI lies between two bounds, reading only the row groups needed.

    Made for a planner whose chunks mostly move forward through key order: row groups wholly before
    the last lower bound are not looked at again until a lower bound goes back (then every group is
    a candidate again, so any order of calls is answered exactly). The last row group read of each
    file is kept, since a chunk's range usually ends inside it.

    Args:
        paths: files written by `write_sorted`.
    """

    def __init__(self, paths: Sequence[Path]):
        self._files = [pq.ParquetFile(p) for p in paths]
        self._bounds = [_group_bounds(f) for f in self._files]
        self._start = [0] * len(self._files)  # per file: groups before it end before the last lower bound
        self._kept: list[tuple[int, pa.Table] | None] = [None] * len(self._files)
        self._last_lo: str | None = None

    def between(self, uris: pa.ChunkedArray | pa.Array) -> pa.Table:
        """The rows whose URI lies between the least and the greatest of `uris` (INDEX_SCHEMA, file by file)."""
        if len(uris) == 0 or not self._files:
            return INDEX_SCHEMA.empty_table()
        b = pc.min_max(uris).as_py()
        lo, hi = b["min"], b["max"]
        if self._last_lo is not None and lo < self._last_lo:
            self._start = [0] * len(self._files)
        self._last_lo = lo
        parts = [INDEX_SCHEMA.empty_table()]
        for i, f in enumerate(self._files):
            bounds = self._bounds[i]
            start = self._start[i]
            while start < len(bounds) and bounds[start][1] is not None and bounds[start][1] < lo:
                start += 1
            self._start[i] = start
            for g in range(start, len(bounds)):
                first, last = bounds[g]
                if first is not None and first > hi:
                    break  # sorted: every later group starts after hi too
                if last is not None and last < lo:
                    continue
                kept = self._kept[i]
                if kept is None or kept[0] != g:
                    kept = (g, f.read_row_group(g).cast(INDEX_SCHEMA))
                    self._kept[i] = kept
                t = kept[1]
                inside = pc.and_(pc.greater_equal(t["uri"], lo), pc.less_equal(t["uri"], hi))
                parts.append(t.filter(inside))
        return pa.concat_tables(parts)


def _group_bounds(f: pq.ParquetFile) -> list[tuple[str | None, str | None]]:
    """(min, max) URI of each row group from its statistics; None where the writer kept none (read it)."""
    column = f.schema_arrow.get_field_index("uri")
    out = []
    for g in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(g).column(column).statistics
        if stats is not None and stats.has_min_max:
            out.append((_text(stats.min), _text(stats.max)))
        else:
            out.append((None, None))
    return out


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
