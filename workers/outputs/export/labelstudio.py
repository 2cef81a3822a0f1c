"""Label Studio pre-annotations: `tasks.json` (one task per image) and `labeling-config.xml`.

Each task's `data.image` is a URL Label Studio resolves: the `s3://` URI for S3 sources (the key
percent-encoded, so `?` and `#` stay part of it; connect S3 cloud storage to the project), or
`/data/local-files/?d=PATH` for local sources (PATH relative to `--image-root`, Label Studio's
LOCAL_FILES_DOCUMENT_ROOT; default: the source folder), or `--image-url-template`. Its one
prediction holds, per mask, a `brushlabels` result in Label Studio's brush RLE and/or a
`polygonlabels` result (percent coordinates), the label ("unlabelled" for masks no prompt
labelled) and the score; `model_version` names the run and the model's sha256.

Label colours follow the label's name, not its position: a label that is a colour name ("blue",
"dark green": CSS colour names, ignoring case and spaces) is drawn in that colour; other labels
take the next unused colour of `PALETTE`; "unlabelled" is grey. Create a project with the config
and import the tasks (or let `--label-studio-url` do it: workers.outputs.export.labelstudio_api).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import ImageColor
from pycocotools import mask as mask_utils

from fastsam_core.formats import largest_polygon, ls_brush_rle
from schemas.job import normalize_uri
from workers.outputs.export.base import (
    ExportOptions,
    ExportSummary,
    Stage,
    label_names,
    labelled_images,
    unlabelled_name,
)
from workers.runs.committed import CommittedRun

TASKS, CONFIG = "tasks.json", "labeling-config.xml"
#: The tasks one per line, for the API import (part of the staging folder, not of the export).
TASKS_LINES = ".tasks.jsonl"
#: Colours of labels that are not colour names, in order of use.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#008080")
#: The colour of the unlabelled category.
UNLABELLED_COLOUR = "#9e9e9e"


def label_colours(names: list[str], unlabelled: str) -> dict[str, str]:
    """Each label's colour, `#rrggbb` (see the module docstring)."""
    colours: dict[str, str] = {}
    for n in names:
        css = ImageColor.colormap.get(n.casefold().replace(" ", ""))
        if n == unlabelled:
            colours[n] = UNLABELLED_COLOUR
        elif isinstance(css, str) and css.startswith("#") and len(css) == 7:
            colours[n] = css
    free = [c for c in PALETTE if c not in colours.values()]
    for i, n in enumerate(n for n in names if n not in colours):
        colours[n] = free[i % len(free)] if free else PALETTE[i % len(PALETTE)]
    return colours


def config_xml(names: list[str], shape: str, colours: dict[str, str]) -> str:
    """The labeling config: an Image, BrushLabels and/or PolygonLabels with one Label per name."""
    items = "\n".join(f"    <Label value={quoteattr(n)} background={quoteattr(colours[n])}/>" for n in names)
    tags = []
    if shape in ("brush", "both"):
        tags.append(f'  <BrushLabels name="brush" toName="image">\n{items}\n  </BrushLabels>')
    if shape in ("polygon", "both"):
        tags.append(f'  <PolygonLabels name="polygon" toName="image">\n{items}\n  </PolygonLabels>')
    return '<View>\n  <Image name="image" value="$image" zoom="true"/>\n' + "\n".join(tags) + "\n</View>\n"


def image_url(uri: str, key: str, source_root: str, options: ExportOptions) -> str:
    """The URL Label Studio loads the image from (see the module docstring); `key` is a safe relative path."""
    path = uri if uri.startswith("s3://") else str(Path(source_root) / key)
    if options.image_url_template is not None:
        return options.image_url_template.format(key=key, uri=uri, path=path)
    if uri.startswith("s3://"):
        bucket, _, object_key = uri[5:].partition("/")
        return f"s3://{bucket}/{quote(object_key, safe='/')}"
    root = Path(normalize_uri(options.image_root or source_root))
    return "/data/local-files/?d=" + quote(Path(path).relative_to(root).as_posix())


def write(run: CommittedRun, options: ExportOptions, stage: Stage, summary: ExportSummary) -> None:
    """Stage `tasks.json` and `labeling-config.xml`, counting into `summary`."""
    names, other = label_names(run, options), unlabelled_name(run)
    stage.path(CONFIG).write_text(config_xml(names, options.ls_shape, label_colours(names, other)))
    source_root = normalize_uri(run.manifest.job["source"]["uri"])
    sha = (run.manifest.models.get("fastsam", {}).get("sha256") or ["?"])[0]
    version = f"{run.layout.run_id} fastsam:{sha[:12]}"
    brush, polygon = options.ls_shape in ("brush", "both"), options.ls_shape in ("polygon", "both")
    lines_path = stage.folder / TASKS_LINES
    with open(lines_path, "w") as lines:
        for img, masks in labelled_images(run, options, summary):
            w, h = img["width"], img["height"]
            results, scores = [], []
            for m in masks:
                label = m["label"] or other
                dense = mask_utils.decode({"size": m["rle_size"], "counts": m["rle_counts"].encode()})
                common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
                common["score"] = m["score"]
                if brush:
                    value = {"format": "rle", "rle": ls_brush_rle(dense), "brushlabels": [label]}
                    result = {"id": f"m{m['mask_id']}b", "from_name": "brush", "type": "brushlabels"}
                    results.append({**result, "value": value, **common})
                if polygon:
                    points = largest_polygon(dense)
                    if len(points) < 3:
                        summary.count("mask without a polygon (too thin or small)")
                    else:
                        pct = (points / np.array([w, h]) * 100).round(4).tolist()
                        value = {"points": pct, "closed": True, "polygonlabels": [label]}
                        result = {"id": f"m{m['mask_id']}p", "from_name": "polygon", "type": "polygonlabels"}
                        results.append({**result, "value": value, **common})
                scores.append(m["score"])
                summary.annotations += 1
            summary.images += 1
            task = {
                "data": {"image": image_url(img["uri"], img["key"], source_root, options), "key": img["key"]},
                "predictions": [
                    {
                        "model_version": version,
                        "score": float(np.mean(scores)) if scores else 0.0,
                        "result": results,
                    }
                ],
            }
            lines.write(json.dumps(task) + "\n")
    with open(lines_path) as lines, open(stage.path(TASKS), "w") as out:
        out.write("[")
        for i, line in enumerate(lines):
            out.write(("" if i == 0 else ",\n") + line.rstrip("\n"))
        out.write("]\n")
