"""Preflight: what a run needs, checked in seconds before anything is planned or labelled.

- the source exists and can be listed (one request); a source manifest or inventory exists (its ETag
  goes into the run's fingerprint, so a resume reads the same table);
- the prompt table is read and validated;
- the output can be written (a conditional create and a delete under the run's prefix);
- the FastSAM checkpoint and the CLIP weights are fetched once into the cache and their sha256
  checked here, in the driver, so no actor fails on a missing file or a wrong hash.

Store requests here get a short retry budget (`PREFLIGHT_ATTEMPTS`), so a wrong endpoint fails in
seconds; the run itself retries with the job's full budget. The result pins every verified hash
into the job the actors receive, so the whole run labels with the files that were checked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from fastsam_core.checkpoints import TINY_CHECKPOINT, verify_checkpoint
from schemas.errors import CheckpointError, ObjectNotFoundError, StoreError
from schemas.fingerprint import InputHashes
from schemas.job import Job, StorageSpec
from schemas.layout import RunLayout
from workers.labelling.sidecar import parse_prompt_table, prompt_table_bytes
from workers.storage import check_writable, open_store
from workers.storage.listings import split_uri
from workers.storage.weights import resolve_weights

#: Attempts per store request during the preflight (botocore's, with its backoff).
PREFLIGHT_ATTEMPTS = 3
#: Seconds to open a connection during the preflight.
PREFLIGHT_CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Checked:
    """A job that passed the preflight.

    Attributes:
        job: the job with the verified hashes pinned (model.sha256, clip.sha256, prompt_table_sha256).
        hashes: the verified hashes (for the run's fingerprint).
    """

    job: Job
    hashes: InputHashes


def preflight(job: Job, layout: RunLayout) -> Checked:
    """Check the source, the output, the weights and the prompt table (see the module docstring).

    Raises:
        StoreError: a store cannot be reached, refuses access, or the source does not exist.
        CheckpointError: a weights file is missing or does not match its pin.
        PromptTableError: the prompt table cannot be read or has a bad row.
    """
    quick = job.storage.model_copy(
        update={
            "max_attempts": min(job.storage.max_attempts, PREFLIGHT_ATTEMPTS),
            "connect_timeout_s": min(job.storage.connect_timeout_s, PREFLIGHT_CONNECT_TIMEOUT_S),
        }
    )
    source = open_store(job.source.uri, quick)
    try:
        source.check_root()
    except StoreError as e:
        raise type(e)(f"source: {e}") from None
    listing_etag = _listing_etag(job, quick)
    table_sha = None
    if job.prompt_table is not None:
        data = prompt_table_bytes(job.model_copy(update={"storage": quick}))
        parse_prompt_table(data, job.prompt_table)
        table_sha = hashlib.sha256(data).hexdigest()
    output = open_store(job.output, quick)
    check_writable(output, layout.probe(secrets.token_hex(6)), "output")
    m, c = job.model, job.clip
    try:
        ckpt = TINY_CHECKPOINT
        if m.checkpoint:
            ckpt = resolve_weights(m.checkpoint, m.sha256, m.allow_unpinned, job.storage)
        model_sha = verify_checkpoint(ckpt, m.sha256, m.allow_unpinned)
    except CheckpointError as e:
        raise CheckpointError(f"model.checkpoint: {e}") from None
    clip_sha = None
    if job.uses_clip and c.arch != "color-words":
        try:
            weights = resolve_weights(c.weights, c.sha256, c.allow_unpinned, job.storage)
            clip_sha = verify_checkpoint(weights, c.sha256, allow_unpinned=c.allow_unpinned)
        except CheckpointError as e:
            raise CheckpointError(f"clip.weights: {e}") from None
    pinned = job.model_copy(
        update={
            "model": m.model_copy(update={"sha256": model_sha}),
            "clip": c.model_copy(update={"sha256": clip_sha if clip_sha else c.sha256}),
            "prompt_table_sha256": table_sha,
        }
    )
    hashes = InputHashes(model=model_sha, clip=clip_sha, prompt_table=table_sha, listing=listing_etag)
    return Checked(job=pinned, hashes=hashes)


def _listing_etag(job: Job, storage: StorageSpec) -> str | None:
    """The ETag of source.manifest or source.inventory (one HEAD); None when the source is listed.

    Raises:
        ObjectNotFoundError: the manifest does not exist.
    """
    s = job.source
    uri, field = (s.manifest, "manifest") if s.manifest is not None else (s.inventory, "inventory")
    if uri is None:
        return None
    root, key = split_uri(uri)
    info = open_store(root, storage).head(key)
    if info is None:
        raise ObjectNotFoundError(f"source.{field} {uri} does not exist; check the URI")
    return info.etag or f"{info.size}"
