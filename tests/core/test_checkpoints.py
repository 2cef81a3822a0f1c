import pytest

from fastsam_core import KNOWN_CHECKPOINTS, TINY_CHECKPOINT, verify_checkpoint
from fastsam_core.checkpoints import known_checkpoint, sha256_file
from schemas.errors import CheckpointError


def test_registry_holds_published_fastsam_hashes():
    by_name = {c.name: c for c in KNOWN_CHECKPOINTS.values()}
    assert by_name["FastSAM-s.pt"].sha256 == "c9f78716a81c7aff0d608ccc73e1b82ab3aaad86005049f6a92106a0be6d0844"
    assert by_name["FastSAM-s.pt"].size == 23_851_578
    assert by_name["FastSAM-x.pt"].sha256 == "c0be4e7ddbe4c15333d15a859c676d053c486d0a746a3be6a7a9790d52a9b6d7"
    assert by_name["FastSAM-x.pt"].size == 144_943_063


def test_shipped_tiny_checkpoint_matches_its_registry_entry():
    digest = sha256_file(TINY_CHECKPOINT)
    entry = known_checkpoint(digest)
    assert entry is not None and entry.name == "fastsam-tiny.pt"
    assert entry.size == TINY_CHECKPOINT.stat().st_size
    assert verify_checkpoint(TINY_CHECKPOINT) == digest


def test_pins_and_refusals(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"not really a model")
    digest = sha256_file(f)
    with pytest.raises(CheckpointError, match=f"sha256='{digest}'"):
        verify_checkpoint(f)
    assert verify_checkpoint(f, sha256=digest) == digest
    assert verify_checkpoint(f, sha256=digest.upper()) == digest
    assert verify_checkpoint(f, allow_unpinned=True) == digest
    with pytest.raises(CheckpointError, match="is not the one you pinned"):
        verify_checkpoint(f, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="64 hex characters"):
        verify_checkpoint(f, sha256="abc")
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "missing.pt", sha256=digest)
