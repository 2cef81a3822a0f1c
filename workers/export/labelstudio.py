"""Label Studio pre-annotations: `tasks.json` (one task per image) and `labeling-config.xml`.

Each task's `data.image` is a URL Label Studio resolves: the `s3://` URI for S3 sources (with S3
cloud storage connected in the project), `/data/local-files/?d=PATH` for local sources (PATH
relative to `--image-root`, Label Studio's LOCAL_FILES_DOCUMENT_ROOT; default: the source folder),
or `--image-url-template`. Its one prediction holds, per mask, a `brushlabels` result in Label
Studio's brush RLE and/or a `polygonlabels` result (percent coordinates), the label (unlabelled
masks: "object") and the score; `model_version` names the run and the model's sha256.
Create a project with the config, import the tasks: every mask is there to review.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
from pycocotools import mask as mask_utils

from fastsam_core.formats import largest_polygon, ls_brush_rle
from schemas.job import normalize_uri
from workers.committed import CommittedRun
from workers.export import ExportOptions, ExportSummary, label_names, labelled_images, unlabelled_name

TASKS, CONFIG = "tasks.json", "labeling-config.xml"
OWNED = (TASKS, CONFIG)
#: Label colours in the config, in prompt order.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#008080")


def config_xml(names: list[str], shape: str) -> str:
    """The labeling config: an Image, BrushLabels and/or PolygonLabels with one Label per name."""
    items = "\n".join(
        f'    <Label value={quoteattr(n)} background="{PALETTE[i % len(PALETTE)]}"/>' for i, n in enumerate(names)
    )
    tags = []
    if shape in ("brush", "both"):
        tags.append(f'  <BrushLabels name="brush" toName="image">\n{items}\n  </BrushLabels>')
    if shape in ("polygon", "both"):
        tags.append(f'  <PolygonLabels name="polygon" toName="image">\n{items}\n  </PolygonLabels>')
    return '<View>\n  <Image name="image" value="$image" zoom="true"/>\n' + "\n".join(tags) + "\n</View>\n"


def image_url(uri: str, key: str, source_root: str, options: ExportOptions) -> str:
    """The URL Label Studio loads the image from (see the module docstring)."""
    path = uri if uri.startswith("s3://") else str(Path(source_root) / key)
    if options.image_url_template is not None:
        return options.image_url_template.format(key=key, uri=uri, path=path)
    if uri.startswith("s3://"):
        return uri
    root = Path(normalize_uri(options.image_root or source_root))
    return "/data/local-files/?d=" + quote(Path(path).relative_to(root).as_posix())


def write(run: CommittedRun, options: ExportOptions, folder: Path, summary: ExportSummary) -> None:
    """Write `tasks.json` and `labeling-config.xml` into `folder`, counting into `summary`."""
    names, other = label_names(run, options), unlabelled_name(run)
    (folder / CONFIG).write_text(config_xml(names, options.ls_shape))
    source_root = normalize_uri(run.manifest.job["source"]["uri"])
    sha = (run.manifest.models.get("fastsam", {}).get("sha256") or ["?"])[0]
    version = f"{run.layout.run_id} fastsam:{sha[:12]}"
    brush, polygon = options.ls_shape in ("brush", "both"), options.ls_shape in ("polygon", "both")
    first = True
    with open(folder / TASKS, "w") as out:
        out.write("[")
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
            out.write(("" if first else ",\n") + json.dumps(task))
            first = False
        out.write("]\n")
