"""A job's fingerprint: every setting that decides what a run writes, with the hashes of its inputs.

A run's plan records the fingerprint of the job that planned it; running the same run id again
with a job whose fingerprint differs is refused, naming the fields that differ, so one run never
holds rows made by two jobs. Settings that change only where or how fast the work runs (actors,
batch sizes, threads, endpoints, retries) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.job import Job, normalize_uri
from schemas.tables import SCHEMA_VERSION


class InputHashes(BaseModel):
    """sha256 of the files a job reads besides its images, as verified before the run.

    Attributes:
        model: the FastSAM checkpoint.
        clip: the CLIP weights; None without prompts or with the colour-word stand-in.
        prompt_table: the sidecar prompt table's bytes; None without one.
        listing: the ETag of source.manifest or of the inventory's manifest.json (what the run lists);
            None when the source is listed.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    clip: str | None = None
    prompt_table: str | None = None
    listing: str | None = None


def fingerprint(job: Job, hashes: InputHashes) -> dict[str, Any]:
    """The job's output-deciding settings, by dotted field name (JSON-serialisable values)."""
    m, c = job.model, job.clip
    scored = bool(job.prompts)
    clip_used = job.uses_clip
    return {
        "source.uri": normalize_uri(job.source.uri),
        "source.include": list(job.source.include),
        "source.extensions": list(job.source.extensions),
        **({"source.manifest": job.source.manifest} if job.source.manifest else {}),
        **({"source.inventory": job.source.inventory} if job.source.inventory else {}),
        **({"source.listing_etag": hashes.listing} if hashes.listing else {}),
        "model.sha256": hashes.model,
        "model.imgsz": m.imgsz,
        "model.conf": m.conf,
        "model.iou": m.iou,
        "model.max_det": m.max_det,
        "model.retina": m.retina,
        "model.half": m.half,
        **({"model.runtime": m.runtime} if m.runtime != "torch" else {}),
        "clip.arch": c.arch if clip_used else None,
        "clip.sha256": hashes.clip if clip_used else None,
        "clip.min_area": c.min_area if clip_used else None,
        **({"clip.runtime": c.runtime} if clip_used and c.runtime != "torch" and c.arch != "color-words" else {}),
        **({"clip.max_masks": c.max_masks} if clip_used and c.max_masks is not None else {}),
        **({"clip.keep_embeddings": True, "clip.embedding_dtype": c.embedding_dtype} if c.keep_embeddings else {}),
        "prompts": list(job.prompts),
        "negative_prompts": list(job.negative_prompts),
        "selection.mode": job.selection.mode if scored else None,
        "selection.threshold": job.selection.threshold if scored else None,
        "prompt_table.sha256": hashes.prompt_table,
        "limits.max_bytes": job.limits.max_bytes,
        "limits.max_pixels": job.limits.max_pixels,
        "schema_version": SCHEMA_VERSION,
        **({"reprompt.parent": job.reprompt_of} if job.reprompt_of else {}),
    }


#: Fingerprint fields that decide which objects a run reads, how big they may be, and what else it keeps,
#: but not the labels it gives an object: left out of the labelling fingerprint.
_NOT_LABELLING = ("source.", "limits.", "reprompt.", "clip.keep_embeddings", "clip.embedding_dtype")


def labelling(fp: dict[str, Any]) -> dict[str, Any]:
    """The labelling fingerprint: the fields of a job fingerprint that decide an object's labels.

    Model sha256 and parameters, the runtime where it changes outputs, CLIP model and weights,
    prompts, negatives, selection, the prompt table's hash and the schema version; not the source,
    its filters, the limits, or whether embeddings are kept. Two runs with the same labelling
    fingerprint give an unchanged object the same masks and labels.
    """
    return {k: v for k, v in fp.items() if not k.startswith(_NOT_LABELLING)}


def labelling_id(fp: dict[str, Any]) -> str:
    """A short stable id of `labelling(fp)`: 16 hex digits of the sha256 of its canonical JSON."""
    text = json.dumps(labelling(fp), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields whose values differ (or exist on one side only), in the recorded order."""
    names = list(recorded) + [k for k in current if k not in recorded]
    return [k for k in names if recorded.get(k, _MISSING) != current.get(k, _MISSING)]


_MISSING = object()
