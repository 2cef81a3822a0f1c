"""Per-image point and box prompts from a sidecar table (Parquet or JSON lines).

One row per prompt:
    key           string, required: the image's key relative to the source prefix
    prompt_id     string, optional: your id for the prompt (default: the row number)
    points        list of [x, y] pixel pairs (original image, after EXIF orientation)
    point_labels  list of 1 (foreground) / 0 (background), one per point (default: all 1)
    box           [x0, y0, x1, y1] pixels, XYXY
Each row has `points` or `box`, not both. Example JSON line:
    {"key": "cams/a.jpg", "prompt_id": "dog-1", "box": [10, 20, 200, 180]}
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from schemas.errors import PromptTableError
from schemas.job import Job


@dataclass(frozen=True)
class ImagePrompt:
    """One point or box prompt for one image.

    Attributes:
        prompt_id: the table's id for it.
        kind: "points" or "box".
        points_xy: (K, 2) float64 pixels (points), or (0, 2).
        point_labels: (K,) int64, 1 foreground / 0 background.
        box_xyxy: (4,) float64 pixels (box), or None.
    """

    prompt_id: str
    kind: str
    points_xy: np.ndarray
    point_labels: np.ndarray
    box_xyxy: np.ndarray | None


def _table(data: bytes, name: str) -> pa.Table:
    try:
        if name.lower().endswith(".parquet"):
            return pq.read_table(io.BytesIO(data))
        return pajson.read_json(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        raise PromptTableError(f"prompt table {name} cannot be read: {e}") from None


def parse_prompt_table(data: bytes, name: str) -> dict[str, list[ImagePrompt]]:
    """Validate a prompt table and group its prompts by image key.

    Args:
        data: the file's bytes (.parquet or .jsonl, told apart by `name`).
        name: the table's URI, for messages.

    Raises:
        PromptTableError: naming the first bad row and what is wrong with it.
    """
    table = _table(data, name)
    if "key" not in table.column_names:
        raise PromptTableError(f"prompt table {name} has no 'key' column; add the image key of each prompt")
    rows = table.to_pylist()
    out: dict[str, list[ImagePrompt]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        where = f"prompt table {name}, row {i}"
        key = row.get("key")
        if not isinstance(key, str) or not key:
            raise PromptTableError(f"{where}: 'key' must be the image's key relative to the source, got {key!r}")
        pid = str(row["prompt_id"]) if row.get("prompt_id") is not None else str(i)
        if (key, pid) in seen:
            raise PromptTableError(f"{where}: prompt_id {pid!r} repeats for {key!r}; ids must be unique per image")
        seen.add((key, pid))
        points, box = row.get("points"), row.get("box")
        if (points is None) == (box is None):
            raise PromptTableError(f"{where}: give either 'points' or 'box' (exactly one)")
        if box is not None:
            b = np.asarray(box, np.float64)
            if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise PromptTableError(f"{where}: 'box' must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {box}")
            out[key].append(ImagePrompt(pid, "box", np.zeros((0, 2)), np.zeros(0, np.int64), b))
            continue
        p = np.asarray(points, np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or not len(p) or not np.isfinite(p).all():
            raise PromptTableError(f"{where}: 'points' must be a non-empty list of [x, y] pairs, got {points}")
        labels = row.get("point_labels")
        lab = np.ones(len(p), np.int64) if labels is None else np.asarray(labels, np.int64)
        if lab.shape != (len(p),) or not np.isin(lab, (0, 1)).all():
            raise PromptTableError(f"{where}: 'point_labels' must hold one 0 or 1 per point, got {labels}")
        out[key].append(ImagePrompt(pid, "points", p, lab, None))
    return dict(out)


def prompt_table_bytes(job: Job) -> bytes:
    """The bytes of the job's prompt table (path or s3:// URI), checked against `prompt_table_sha256` when set.

    Raises:
        PromptTableError: it cannot be read, or its hash differs from the pinned one.
    """
    from schemas.errors import StoreError
    from schemas.uri import Uri
    from workers.storage import open_store

    uri = job.prompt_table
    where = Uri.parse(uri)
    try:
        if where.is_s3:
            data = open_store(f"s3://{where.bucket}", job.storage).get(where.path)
        else:
            with open(where.path, "rb") as f:
                data = f.read()
    except (StoreError, OSError) as e:
        raise PromptTableError(f"prompt table {uri} cannot be read: {e}; check prompt_table") from None
    digest = hashlib.sha256(data).hexdigest()
    if job.prompt_table_sha256 is not None and digest != job.prompt_table_sha256:
        raise PromptTableError(
            f"prompt table {uri} has sha256 {digest}, but {job.prompt_table_sha256} was checked when the run "
            "started: the table changed during the run; start a new run"
        )
    return data


def load_prompt_table(job: Job) -> dict[str, list[ImagePrompt]]:
    """The job's prompt table, read and validated; {} when the job has none.

    Raises:
        PromptTableError: the table cannot be read or has a bad row.
    """
    if job.prompt_table is None:
        return {}
    return parse_prompt_table(prompt_table_bytes(job), job.prompt_table)
