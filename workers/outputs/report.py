"""The run report: one self-contained HTML file, written at commit as `runs/{run_id}/report.html`.

It opens from a folder or after `aws s3 cp` with no network: CSS inline, thumbnails as JPEG data
URIs, masks and charts as inline SVG, no script, a `data:` favicon. Contents: the run's summary
(counts, errors by kind, throughput, seconds per stage, models, prompts); thumbnails with every
mask outlined in its own colour and its label written on it (a sample of the run, the images with
the lowest mean stability, the best example of each label), every errored object as a placeholder
with its error; histograms of scores, stability, mask areas (log scale) and masks per label; the
error table. Distributions come from the shards' `MaskStats`, so only the shown images' masks
tables and source objects are read. Text from buckets (keys, errors) is escaped.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from schemas.errors import ImageError, StoreError, UnsafeKeyError
from schemas.job import StorageSpec
from schemas.layout import RunLayout
from schemas.manifest import RunManifest, ShardState
from schemas.stats import AREA_STEP, MaskStats
from schemas.tables import IMAGES_SCHEMA, ImageStatus
from workers.labelling.decode import decode_image
from workers.runs.committed import read_shard_table
from workers.runs.summaries import ShardStates
from workers.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

#: Overlay colours (RGB), one per mask in turn; distinct on photos and on each other.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
THUMB = 320  # longest side of a thumbnail, pixels
SAMPLE = 12  # images in the run's sample
LOWEST = 6  # images of the lowest-stability masks shown
MAX_MASKS = 60  # masks drawn per thumbnail (highest scores)
MAX_PLACEHOLDERS = 60  # errored objects shown as placeholders in the grid
MAX_ERRORS = 500  # errored objects listed in the table (the images table has them all)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _thumbnail(rgb: np.ndarray, size: tuple[int, int], masks: list[dict]) -> str:
    """An image figure: the picture (JPEG data URI) under an SVG of its masks' outlines and labels.

    Args:
        rgb: the picture, at its full size or smaller (a JPEG draft).
        size: (height, width) of the full image, the frame of the masks' RLEs and boxes.
        masks: its masks-table rows.
    """
    h, w = size
    scale = min(1.0, THUMB / max(h, w))
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    shapes, texts = [], []
    for i, m in enumerate(sorted(masks, key=lambda m: -m["score"])[:MAX_MASKS]):
        dense = mask_utils.decode({"size": m["rle_size"], "counts": m["rle_counts"].encode()})
        scaled = cv2.resize(dense, (tw, th), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(scaled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        paths = " ".join(
            "M" + " L".join(f"{x},{y}" for x, y in c.reshape(-1, 2)) + " Z" for c in contours if len(c) > 2
        )
        if not paths:
            continue
        color = _hex(PALETTE[i % len(PALETTE)])
        shapes.append(f'<path d="{paths}" fill="{color}" fill-opacity="0.35" stroke="{color}" stroke-width="2"/>')
        if m["label"] is not None:
            x, y = (float(v) * scale for v in m["bbox"][:2])
            texts.append(f'<text x="{x + 2:.1f}" y="{y + 12:.1f}" fill="{color}">{_e(m["label"])}</text>')
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else ""
    return (
        f'<svg viewBox="0 0 {tw} {th}" width="{tw}" height="{th}"><image href="{uri}" width="{tw}" height="{th}"/>'
        + "".join(shapes) + '<g class="labels">' + "".join(texts) + "</g></svg>"
    )  # fmt: skip


def _placeholder(row: dict) -> str:
    """An errored object in the grid: its kind and its error where its thumbnail would be."""
    error = (row["error"] or "")[:160]
    return (
        f'<figure class="thumb"><div class="placeholder"><b>{_e(row["status"])}</b><br>{_e(error)}</div>'
        f"<figcaption>{_e(row['key'])}</figcaption></figure>"
    )


def _bars(title: str, counts: list[int], labels: list[str], log_note: str = "") -> str:
    """A histogram as inline SVG bars with the first, middle and last bin edges written under it."""
    w, h, n = 360, 120, max(len(counts), 1)
    top = max(max(counts, default=0), 1)
    bw = w / n
    bars = "".join(
        f'<rect x="{i * bw + 1:.1f}" y="{h - c / top * h:.1f}" width="{bw - 2:.1f}" height="{c / top * h:.1f}">'
        f"<title>{_e(labels[i])}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    ticks = f"<span>{_e(labels[0])}</span><span>{_e(labels[n // 2])}</span><span>{_e(labels[-1])}</span>"
    return (
        f'<figure class="chart"><figcaption>{_e(title)} <small>{sum(counts)} masks{log_note}</small></figcaption>'
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}">{bars}</svg><div class="ticks">{ticks}</div></figure>'
    )


def _label_bars(labels: dict[str, int], prompts: list[str]) -> str:
    rows = [(p, labels.get(p, 0)) for p in prompts] + [("(unlabelled)", labels.get("", 0))]
    top = max([c for _, c in rows] + [1])
    body = "".join(
        f'<tr><td>{_e(name)}</td><td><span class="hbar" style="width:{c / top * 240:.0f}px"></span> {c}</td></tr>'
        for name, c in rows
    )
    return f'<figure class="chart"><figcaption>Masks per label</figcaption><table>{body}</table></figure>'


def run_stats(states: Iterable[ShardState]) -> MaskStats:
    """The run's mask statistics: its shards' summaries' merged."""
    stats = MaskStats()
    for state in states:
        stats = stats.merged(state.summary.mask_stats)
    return stats


def _rows_by_id(images: Iterable[pa.Table], ids: set[str]) -> dict[str, dict]:
    out = {}
    for t in images:
        hit = t.filter(pc.is_in(t["image_id"], value_set=pa.array(sorted(ids), pa.string())))
        out.update({r["image_id"]: r for r in hit.to_pylist()})
    return out


def build(
    output: ObjectStore,
    source: ObjectStore,
    layout: RunLayout,
    manifest: RunManifest,
    states: ShardStates,
    images: list[pa.Table],
    stats: MaskStats | None = None,
) -> str:
    """The report's HTML.

    Args:
        output: the job's output store (the run's masks tables are read for the shown images).
        source: the job's source store (the shown images are read and decoded).
        layout: the run.
        manifest: the run's manifest.
        states: its shards' states (workers.runs.summaries).
        images: the run's images tables, one per shard, or the rows a streamed commit kept (`ReportRows`).
        stats: `run_stats(states)`, when the caller has it already.
    """
    s = manifest.summary
    stats = stats if stats is not None else run_stats(states)
    prompts = manifest.positive_prompts
    ok = [t.filter(pc.equal(t["status"], ImageStatus.OK.value)) for t in images]
    okcat = pa.concat_tables(ok) if ok else None
    sample = []
    if okcat is not None and okcat.num_rows:
        picked = pc.select_k_unstable(okcat, min(SAMPLE, okcat.num_rows), sort_keys=[("image_id", "ascending")])
        sample = okcat.take(picked)["image_id"].to_pylist()
    lowest = [i for i, _ in stats.lowest_stability[:LOWEST]]
    examples = {label: i for label, (i, _) in sorted(stats.label_examples.items())}
    rows = _rows_by_id(ok, set(sample) | set(lowest) | set(examples.values()))
    limits = manifest.job.get("limits", {})
    max_pixels, max_bytes = int(limits.get("max_pixels", 100_000_000)), limits.get("max_bytes")
    masks_of: dict[int, pa.Table] = {}

    def figure(image_id: str, caption: str) -> str:
        r = rows.get(image_id)
        if r is None:
            return ""
        if r["shard_id"] not in masks_of:
            sid = r["shard_id"]
            state = states[sid]
            masks_of[sid] = read_shard_table(output, layout, "masks", sid, state.attempt_id, state.summary.masks)
        t = masks_of[r["shard_id"]]
        mine = t.filter(pc.equal(t["image_id"], image_id)).to_pylist()
        try:
            data, _ = source.read(r["key"], max_bytes=max_bytes)
            rgb = decode_image(data, r["key"], max_pixels, draft=THUMB).rgb
            picture = _thumbnail(rgb, (r["height"], r["width"]), mine)
        except (StoreError, ImageError, UnsafeKeyError) as e:  # the source changed since the run: say so, keep going
            picture = f'<div class="placeholder">source unreadable now: {_e(e)}</div>'
        text = f"{r['key']} · {len(mine)} masks{caption}"
        return f'<figure class="thumb">{picture}<figcaption>{_e(text)}</figcaption></figure>'

    errored = (
        pa.concat_tables([t.filter(pc.not_equal(t["status"], ImageStatus.OK.value)) for t in images])
        if images
        else None
    )
    errors = errored.slice(0, MAX_ERRORS).select(["key", "status", "error"]).to_pylist() if errored is not None else []
    more = max(s.counts.failed - len(errors), 0)  # the rows given may be only those shown (`ReportRows`)
    seconds = (manifest.finished_at - manifest.started_at).total_seconds()
    c = s.counts
    unit = [f"{i / 20:.2f}" for i in range(20)]
    areas = [f"{10 ** (i * AREA_STEP):.0f} px" for i in range(len(stats.log10_area))]
    summary_rows = [
        ("objects", c.objects), ("labelled", c.labelled), ("failed", c.failed), ("masks", c.masks),
        ("listed", c.listed), ("skipped (unchanged)", c.skipped), ("new", c.new), ("changed", c.changed),
        ("relabelled", c.relabelled), ("shards", s.shards_planned),
        ("wall seconds", f"{seconds:.1f}"), ("images / s", f"{c.objects / seconds:.2f}" if seconds > 0 else "-"),
    ]  # fmt: skip
    sections = [
        f"<h1>fastsam-label run <code>{_e(layout.run_id)}</code></h1>",
        f"<p>{_e(s.output)} · {_e(manifest.started_at.isoformat())} → {_e(manifest.finished_at.isoformat())}"
        f" · code {_e(manifest.code_version)}</p>",
        '<section class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in summary_rows)
        + "</section>",
        "<h2>Errors by kind</h2><table>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in s.errors_by_kind.items())
        + ("" if s.errors_by_kind else "<tr><td>none</td></tr>") + "</table>"
        + (f'<p class="list-errors"><b>Not listed:</b> {_e(s.list_errors.warning(manifest.job["source"]["uri"]))}'
           "</p>" if s.list_errors.count else ""),
        "<h2>Seconds per stage</h2><table>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{v:.2f}</td></tr>" for k, v in s.stage_seconds.items()) + "</table>",
        "<h2>Models and prompts</h2><table>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v.get('name'))} {_e(', '.join(v.get('sha256') or []))}</td></tr>"
                  for k, v in manifest.models.items())
        + f"<tr><td>prompts</td><td>{_e(', '.join(manifest.prompts))}</td></tr></table>",
        "<h2>A sample of the run</h2><div class=\"grid\">" + "".join(figure(i, "") for i in sample) + "</div>",
        "<h2>Lowest mean stability</h2><div class=\"grid\">"
        + "".join(figure(i, f" · mean stability {v:.3f}") for i, v in stats.lowest_stability[:LOWEST]) + "</div>",
        "<h2>One per label</h2><div class=\"grid\">"
        + "".join(figure(i, f" · best {label!r}") for label, i in examples.items()) + "</div>",
        '<h2>Distributions</h2><div class="charts">'
        + _bars("Detector score", stats.score, unit)
        + _bars("Stability", stats.stability, unit)
        + _bars("Mask area", stats.log10_area, areas, " · log scale")
        + _label_bars(stats.labels, prompts) + "</div>",
        f"<h2>Errored objects ({s.counts.failed})</h2>"
        '<div class="grid">'
        + "".join(_placeholder(e) for e in errors[:MAX_PLACEHOLDERS]) + "</div>"
        + '<table class="errors"><tr><th>object</th><th>status</th><th>error</th></tr>'
        + "".join(f"<tr><td>{_e(e['key'])}</td><td>{_e(e['status'])}</td><td>{_e(e['error'])}</td></tr>"
                  for e in errors)
        + "</table>" + (f"<p>and {more} more in the images table</p>" if more else ""),
    ]  # fmt: skip
    return _PAGE.format(title=_e(f"fastsam-label {layout.run_id}"), body="\n".join(sections))


def write(
    output: ObjectStore,
    source: ObjectStore,
    layout: RunLayout,
    manifest: RunManifest,
    states: ShardStates,
    rows: ReportRows,
) -> str:
    """Write `runs/{run_id}/report.html` from the rows `rows` kept; its URI."""
    html_page = build(output, source, layout, manifest, states, [rows.table()], rows.stats)
    output.put(layout.report, html_page.encode())
    return output.uri_of(layout.report)


class ReportRows:
    """The few images rows a report shows, kept while the images tables stream past (bounded memory).

    The sample (the SAMPLE ok images of least image id), the images of the lowest-stability masks
    and of each label's example (known from the shards' summaries), and the first MAX_ERRORS
    errored rows in shard order: what `build` shows from all the tables.

    Args:
        states: the run's shards' states (their mask statistics are merged once, into `stats`).
    """

    def __init__(self, states: Iterable[ShardState]):
        self.stats = stats = run_stats(states)
        wanted = {i for i, _ in stats.lowest_stability[:LOWEST]} | {i for i, _ in stats.label_examples.values()}
        self._wanted = pa.array(sorted(wanted), pa.string())
        self._sample: pa.Table | None = None
        self._kept: list[pa.Table] = []
        self._errors = 0

    def add(self, images: pa.Table) -> None:
        """Keep what the report may show of one shard's images table."""
        ok_mask = pc.equal(images["status"], ImageStatus.OK.value)
        ok = images.filter(ok_mask)
        both = ok if self._sample is None else pa.concat_tables([self._sample, ok])
        if both.num_rows:
            self._sample = both.take(pc.select_k_unstable(both, min(SAMPLE, both.num_rows),
                                                          sort_keys=[("image_id", "ascending")]))  # fmt: skip
        self._kept.append(ok.filter(pc.is_in(ok["image_id"], value_set=self._wanted)))
        if self._errors < MAX_ERRORS:
            errored = images.filter(pc.invert(ok_mask)).slice(0, MAX_ERRORS - self._errors)
            self._errors += errored.num_rows
            self._kept.append(errored)

    def table(self) -> pa.Table:
        """The kept rows as one images table, one row per image."""
        rows, seen = [], set()
        for t in [self._sample, *self._kept]:
            for r in t.to_pylist() if t is not None else ():
                if r["image_id"] not in seen:
                    seen.add(r["image_id"])
                    rows.append(r)
        return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)


class CommitReport:
    """The commit's report hook (workers.runs.commit.ReportHook): rows kept as they stream, then `write`."""

    def __init__(self, output: ObjectStore, layout: RunLayout, manifest: RunManifest, states: ShardStates):
        self.output, self.layout, self.manifest, self.states = output, layout, manifest, states
        self.rows = ReportRows(states)

    def add(self, images: pa.Table) -> None:
        """See `ReportRows.add`."""
        self.rows.add(images)

    def write(self) -> str | None:
        """Write the report from the run's own source; its URI, or None when it could not be made.

        Logged, never raised: the report must never cost a commit (`fastsam-label report` writes it again).
        """
        m = self.manifest
        try:
            source = open_store(m.job["source"]["uri"], StorageSpec(**(m.job.get("storage") or {})))
            return write(self.output, source, self.layout, m, self.states, self.rows)
        except Exception as e:
            log.warning("run %s: no report: %s: %s", self.layout.run_id, type(e).__name__, e)
            return None


#: What a commit is given to write the report: (output, layout, manifest, states) -> CommitReport.
at_commit = CommitReport


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 90px; }}
.card b {{ display: block; font-size: 20px; }} .card span {{ color: #666; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.thumb {{ margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; max-width: 332px; }}
.thumb figcaption {{ font-size: 12px; color: #444; word-break: break-all; }}
.thumb text {{ font: bold 12px sans-serif; paint-order: stroke; stroke: #000; stroke-width: 3px; }}
.placeholder {{ width: 200px; height: 120px; background: #eee; color: #900; display: flex; flex-direction: column;
  align-items: center; justify-content: center; text-align: center; font-size: 11px; padding: 4px;
  overflow: hidden; word-break: break-all; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }}
.chart rect {{ fill: #4363d8; }} .ticks {{ display: flex; justify-content: space-between; width: 360px;
  font-size: 11px; color: #666; }}
.hbar {{ display: inline-block; height: 10px; background: #8a8f98; }}
.errors td {{ font-size: 12px; word-break: break-all; }}
</style></head>
<body>
{body}
</body></html>
"""
