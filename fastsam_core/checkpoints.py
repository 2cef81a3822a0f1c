"""Known model checkpoints and sha256 verification, done before anything is unpickled.

A checkpoint is accepted when its sha256 equals the hash the caller pinned, or, when the caller
pinned none, when its hash is one of `KNOWN_CHECKPOINTS`. Anything else is refused unless the
caller explicitly allows unpinned files: a pickle runs code when it is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import CheckpointError


@dataclass(frozen=True)
class KnownCheckpoint:
    """A published or project-made checkpoint.

    Attributes:
        name: file name as published.
        sha256: lowercase hex digest of the whole file.
        size: file size in bytes.
        imgsz: the input size (pixels, longest side) the model was trained for.
    """

    name: str
    sha256: str
    size: int
    imgsz: int


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    c.sha256: c
    for c in (
        KnownCheckpoint(
            "FastSAM-s.pt", "c9f78716a81c7aff0d608ccc73e1b82ab3aaad86005049f6a92106a0be6d0844", 23_851_578, 1024
        ),
        KnownCheckpoint(
            "FastSAM-x.pt", "c0be4e7ddbe4c15333d15a859c676d053c486d0a746a3be6a7a9790d52a9b6d7", 144_943_063, 1024
        ),
        # Trained here by `python -m tools.train_tiny` on synthetic shapes; ships in the package.
        KnownCheckpoint(
            "fastsam-tiny.pt", "8f46bca7341d865cbe2a7b3a434fad6a816fd86bff8fcc4af04330d68b63c0ee", 6_730_548, 160
        ),
    )
}

#: The checkpoint that ships inside the package, for tests and the offline demo.
TINY_CHECKPOINT = Path(__file__).parent / "weights" / "fastsam-tiny.pt"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """The lowercase hex sha256 of a file, read in chunks of `chunk_bytes`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(path: str | Path, sha256: str | None = None, allow_unpinned: bool = False) -> str:
    """Check a model file against its pin before it is loaded.

    Args:
        path: local file.
        sha256: the hash the caller pins (64 hex characters), or None to accept only known checkpoints.
        allow_unpinned: accept a file that matches no pin (unsafe: the file is a pickle).

    Returns:
        The file's sha256.

    Raises:
        CheckpointError: the file is missing, its hash differs from the pin, or it is unpinned.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file {p} does not exist; give the path of a local checkpoint file")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise CheckpointError(f"sha256 for {p} must be 64 hex characters, but got {sha256!r}")
    actual = sha256_file(p)
    if sha256 is not None:
        if actual != sha256.lower():
            raise CheckpointError(
                f"model file {p} has sha256 {actual}, but {sha256.lower()} was pinned: the file is not the one "
                "you pinned (corrupt, truncated or replaced); fetch it again or pin the hash of the file you trust"
            )
        return actual
    if actual in KNOWN_CHECKPOINTS or allow_unpinned:
        return actual
    raise CheckpointError(
        f"model file {p} (sha256 {actual}) is not a known checkpoint and no sha256 was pinned; loading it would "
        f"run its pickled code. If you trust the file, pin it with sha256='{actual}' (in a job file: the model's "
        "sha256 field), or allow unpinned files explicitly"
    )


def known_checkpoint(sha256: str) -> KnownCheckpoint | None:
    """The registry entry for a hash, or None."""
    return KNOWN_CHECKPOINTS.get(sha256.lower())
