"""What a job's source lists, as Arrow batches in key order: a store's objects, a manifest table, an S3 Inventory.

    source.uri                the store's listing (S3 ListObjectsV2 pages, or a folder's walk)
    source.manifest           a Parquet, CSV (with a header) or JSON Lines table: a `key` column (relative
                              to source.uri) or a `uri` column (under source.uri); optional `etag`, `size`
    source.inventory          an S3 Inventory report's manifest.json, and its CSV or Parquet files

Every listing yields SHARD_SCHEMA tables (key relative to source.uri, size in bytes, etag) whose keys
strictly increase in UTF-8 byte order (S3's), across batches too, so a planner can cut shards as they
come and resume after a key. A table is downloaded to a temporary folder (streamed to disk) and put
in key order by DuckDB, which sorts out of core under a memory limit; one row per key is kept.
Problems with rows are bad input, not failures: rows that name no object under source.uri and keys
listed more than once are reported in `skipped`, one line each naming the row and the fix, and the
rest is listed. A size the table does not give is 0 (the reader measures what it reads); an object
without an ETag is never taken as unchanged by an incremental run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.errors import ListingError, ObjectNotFoundError
from schemas.job import SourceSpec, StorageSpec
from schemas.tables import SHARD_SCHEMA
from schemas.uri import Uri
from workers.storage.base import ObjectStore
from workers.storage.open import open_store

#: Rows per batch a listing yields (an S3 page holds 1,000 keys).
BATCH = 1_000
#: DuckDB's memory limit while it sorts a table (it spills to the temporary folder beyond it).
SORT_MEMORY = "256MB"
#: Bad rows named one by one in `skipped` (the rest are counted in one line).
_NAMED = 20
#: Manifest file suffixes and the DuckDB reader of each.
_READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".tsv": "csv",
            ".jsonl": "json", ".ndjson": "json", ".jsonl.gz": "json", ".json": "json"}  # fmt: skip


class Listing(Protocol):
    """A source's objects in key order."""

    uri: str

    def batches(self, skipped: list[str], start_after: str | None = None) -> Iterator[pa.Table]:
        """SHARD_SCHEMA tables, keys strictly increasing, after `start_after`; problems appended to `skipped`."""
        ...


def open_listing(spec: SourceSpec, storage: StorageSpec | None = None, source: ObjectStore | None = None) -> Listing:
    """The listing a job's source names (see the module docstring).

    Args:
        spec: the job's source.
        storage: how to reach the stores.
        source: the store at `spec.uri` (opened here when None).
    """
    source = source if source is not None else open_store(spec.uri, storage)
    if spec.manifest is not None:
        return TableListing(source, spec.manifest, "manifest", storage)
    if spec.inventory is not None:
        return TableListing(source, spec.inventory, "inventory", storage)
    return StoreListing(source)


class StoreListing:
    """A store's own listing, batched."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.uri = store.uri

    def batches(self, skipped: list[str], start_after: str | None = None) -> Iterator[pa.Table]:
        """See `Listing.batches`."""
        keys: list[str] = []
        sizes: list[int] = []
        etags: list[str | None] = []
        for o in self.store.list(skipped=skipped, start_after=start_after):
            keys.append(o.key), sizes.append(o.size), etags.append(o.etag)
            if len(keys) >= BATCH:
                yield pa.table([keys, sizes, etags], schema=SHARD_SCHEMA)
                keys, sizes, etags = [], [], []
        if keys:
            yield pa.table([keys, sizes, etags], schema=SHARD_SCHEMA)


def split_uri(uri: str) -> tuple[str, str]:
    """(the folder or bucket prefix URI, the object's key in it) of an object URI."""
    where = Uri.parse(uri)
    if where.is_s3:
        folder, _, name = where.path.rpartition("/")
        return f"s3://{where.bucket}/{folder}", name
    path = Path(where.path)
    return str(path.parent), path.name


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class TableListing:
    """A manifest table or an S3 Inventory report, sorted by DuckDB (see the module docstring).

    Args:
        source: the store at source.uri (keys are relative to it).
        uri: the manifest file, or the inventory's manifest.json.
        kind: "manifest" or "inventory".
        storage: how to reach the stores.
    """

    def __init__(self, source: ObjectStore, uri: str, kind: str, storage: StorageSpec | None = None):
        self.source, self.uri, self.kind, self.storage = source, uri, kind, storage

    def batches(self, skipped: list[str], start_after: str | None = None) -> Iterator[pa.Table]:
        """See `Listing.batches`.

        Raises:
            ListingError: the table cannot be read, lacks a key column, or the inventory manifest is bad.
            ObjectNotFoundError: the manifest does not exist.
        """
        with tempfile.TemporaryDirectory(prefix="fastsam-listing-") as tmp:
            folder = Path(tmp)
            sorted_path = self._sort(folder, skipped)
            reported = 0
            for batch in pq.ParquetFile(sorted_path).iter_batches(BATCH):
                t = pa.Table.from_batches([batch])
                if start_after is not None:
                    t = t.filter(pc.greater(t["key"], start_after))
                dups = t.filter(pc.greater(t["copies"], 1))
                for row in dups.to_pylist():
                    reported += 1
                    if reported <= _NAMED:
                        skipped.append(f"{row['key']}: listed {row['copies']} times in {self.uri}; labelled once "
                                       "(remove the duplicate rows)")  # fmt: skip
                    else:
                        skipped.append(f"{row['key']}: listed {row['copies']} times")
                if t.num_rows:
                    size = pc.fill_null(t["size"].cast(pa.int64()), 0)
                    yield pa.table([t["key"], size, t["etag"]], schema=SHARD_SCHEMA)

    # -- sorting -----------------------------------------------------------------------------------
    def _sort(self, folder: Path, skipped: list[str]) -> Path:
        """Download the table's files, normalise them to (key, size, etag), sort and group by key; the Parquet path."""
        import duckdb

        relation = self._inventory(folder) if self.kind == "inventory" else self._manifest(folder)
        con = duckdb.connect(config={"memory_limit": SORT_MEMORY, "temp_directory": str(folder / "spill"),
                                     "threads": 2, "preserve_insertion_order": False})  # fmt: skip
        try:
            try:
                con.execute(f"CREATE VIEW rows AS {relation}")
                bad = con.execute("SELECT count(*) FROM rows WHERE key IS NULL OR key = ''").fetchone()[0]
                if bad:
                    named = con.execute(
                        f"SELECT what FROM rows WHERE key IS NULL OR key = '' LIMIT {_NAMED}"
                    ).fetchall()
                    under = self.source.uri
                    skipped += [f"{self.uri}: {w} names no object under {under}; list objects under source.uri"
                                for (w,) in named]  # fmt: skip
                    if bad > len(named):
                        skipped.append(f"{self.uri}: {bad - len(named)} more rows name no object under {under}")
                out = folder / "sorted.parquet"
                con.execute(
                    "COPY (SELECT key, min(size) AS size, min(etag) AS etag, count(*) AS copies FROM rows "
                    "WHERE key IS NOT NULL AND key <> '' GROUP BY key ORDER BY key) "
                    f"TO {_sql_text(str(out))} (FORMAT parquet, ROW_GROUP_SIZE 100000)"
                )
            except duckdb.Error as e:
                first = str(e).strip().splitlines()[0]
                raise ListingError(f"{self.uri}: cannot read it as a {self.kind} ({first}); check the file") from None
        finally:
            con.close()
        return out

    def _download(self, uri: str, folder: Path, what: str) -> Path:
        root, key = split_uri(uri)
        store = open_store(root, self.storage)
        path = folder / f"{len(list(folder.iterdir()))}-{key}"
        try:
            store.download(key, path)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"{what} {uri} does not exist; check source.{self.kind}") from None
        return path

    def _manifest(self, folder: Path) -> str:
        """SQL of the manifest's rows as (key, size, etag, what)."""
        import duckdb

        name = self.uri.lower()
        reader = next((r for s, r in sorted(_READERS.items(), key=lambda x: -len(x[0])) if name.endswith(s)), None)
        if reader is None:
            raise ListingError(
                f"source.manifest {self.uri}: unknown format; name it .parquet, .csv (with a header row) or "
                ".jsonl (one JSON object per line)"
            )
        path = self._download(self.uri, folder, "source.manifest")
        scan = {
            "parquet": f"read_parquet({_sql_text(str(path))})",
            "csv": f"read_csv({_sql_text(str(path))}, header = true, all_varchar = true)",
            "json": f"read_json({_sql_text(str(path))}, format = 'newline_delimited')",
        }[reader]
        try:
            columns = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0]
            raise ListingError(f"source.manifest {self.uri} cannot be read as {reader} ({first}); check the file") \
                from None  # fmt: skip
        lower = {c.lower(): c for c in columns}
        if "key" in lower:
            key = f'CAST("{lower["key"]}" AS VARCHAR)'
            what = f"""'row with key "' || coalesce({key}, 'null') || '"'"""
        elif "uri" in lower:
            uri = f'CAST("{lower["uri"]}" AS VARCHAR)'
            prefix = _sql_text(self.source.uri_of(""))
            key = f"CASE WHEN starts_with({uri}, {prefix}) THEN substr({uri}, length({prefix}) + 1) END"
            what = f"""'row with uri "' || coalesce({uri}, 'null') || '"'"""
        else:
            raise ListingError(
                f"source.manifest {self.uri} has no key or uri column (it has {', '.join(columns[:8])}); name the "
                "column of object keys relative to source.uri `key`, or of full URIs `uri`"
            )
        etag = f"""trim(CAST("{lower["etag"]}" AS VARCHAR), '"')""" if "etag" in lower else "CAST(NULL AS VARCHAR)"
        size = f'TRY_CAST("{lower["size"]}" AS BIGINT)' if "size" in lower else "CAST(NULL AS BIGINT)"
        return f"SELECT {key} AS key, {size} AS size, {etag} AS etag, {what} AS what FROM {scan}"

    def _inventory(self, folder: Path) -> str:
        """SQL of the inventory's rows of objects under source.uri as (key, size, etag, what)."""
        import duckdb

        src = Uri.parse(self.source.uri)
        if not Uri.parse(self.uri).is_s3 or not src.is_s3:
            raise ListingError(f"source.inventory {self.uri}: an S3 Inventory is read from s3://, for an s3:// source")
        root, key = split_uri(self.uri)
        data = open_store(root, self.storage)
        try:
            text = data.get(key)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"source.inventory {self.uri} does not exist; check source.inventory") from None
        doc = _inventory_manifest(self.uri, text)
        if doc["sourceBucket"] != src.bucket:
            raise ListingError(
                f"source.inventory {self.uri} lists bucket {doc['sourceBucket']}, but source.uri is in bucket "
                f"{src.bucket}; point it at that bucket's inventory"
            )
        dest = doc["destinationBucket"].rsplit(":", 1)[-1]
        files = [self._download(f"s3://{dest}/{f['key']}", folder, "inventory file") for f in doc["files"]]
        paths = "[" + ", ".join(_sql_text(str(p)) for p in files) + "]"
        if doc["fileFormat"] == "CSV":
            names = [c.strip() for c in doc["fileSchema"].split(",")]
            cols = "{" + ", ".join(f"{_sql_text(n)}: 'VARCHAR'" for n in names) + "}"
            scan = f"read_csv({paths}, header = false, columns = {cols}, compression = 'gzip')"
            fields = {n.lower(): n for n in names}
            bucket, raw = f'"{fields["bucket"]}"', f'''url_decode(replace("{fields["key"]}", '+', ' '))'''
            size = f'TRY_CAST("{fields["size"]}" AS BIGINT)' if "size" in fields else "CAST(NULL AS BIGINT)"
            etag = f'"{fields["etag"]}"' if "etag" in fields else "CAST(NULL AS VARCHAR)"
            latest = f"""AND coalesce("{fields["islatest"]}", 'true') = 'true'""" if "islatest" in fields else ""
            if "isdeletemarker" in fields:
                latest += f""" AND coalesce("{fields["isdeletemarker"]}", 'false') = 'false'"""
        else:
            scan = f"read_parquet({paths}, union_by_name = true)"
            bucket, raw, size, etag = "bucket", "key", "CAST(size AS BIGINT)", "e_tag"
            latest = ""
            names = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
            if "is_latest" in names:
                latest += " AND coalesce(is_latest, true)"
            if "is_delete_marker" in names:
                latest += " AND NOT coalesce(is_delete_marker, false)"
        prefix = f"{src.path}/" if src.path else ""
        return (
            f"SELECT substr({raw}, {len(prefix) + 1}) AS key, {size} AS size, nullif({etag}, '') AS etag, "
            "CAST(NULL AS VARCHAR) AS what "
            f"FROM {scan} WHERE {bucket} = {_sql_text(src.bucket)} AND starts_with({raw}, {_sql_text(prefix)}) "
            f"AND length({raw}) > {len(prefix)} {latest}"
        )


def _inventory_manifest(uri: str, text: bytes) -> dict:
    """An S3 Inventory manifest.json, checked for what is read from it.

    Raises:
        ListingError: not JSON, a field missing, or a format this reader does not read (ORC).
    """
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ListingError(f"source.inventory {uri} is not JSON ({e}); point it at a report's manifest.json") from None
    if not isinstance(doc, dict):
        raise ListingError(f"source.inventory {uri} is not an S3 Inventory manifest.json; point it at one")
    missing = [f for f in ("sourceBucket", "destinationBucket", "fileFormat", "files") if f not in doc]
    if doc.get("fileFormat") == "CSV" and "fileSchema" not in doc:
        missing.append("fileSchema")
    if missing:
        raise ListingError(
            f"source.inventory {uri} is not an S3 Inventory manifest.json: it lacks {', '.join(missing)}; point it "
            "at the manifest.json of an inventory report"
        )
    if doc["fileFormat"] not in ("CSV", "Parquet"):
        raise ListingError(
            f"source.inventory {uri}: format {doc['fileFormat']} is not read; configure the inventory to write CSV "
            "or Parquet"
        )
    if doc["fileFormat"] == "CSV":
        fields = {c.strip().lower() for c in str(doc["fileSchema"]).split(",")}
        if not {"bucket", "key"} <= fields:
            raise ListingError(f"source.inventory {uri}: its fileSchema lacks Bucket or Key ({doc['fileSchema']})")
    files = doc["files"]
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("key"), str) for f in files):
        raise ListingError(f"source.inventory {uri}: `files` must list objects with a `key`; is it a manifest.json?")
    return doc
