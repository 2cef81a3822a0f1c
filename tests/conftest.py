import numpy as np
import pytest

from tests.helpers import make_random_checkpoint


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """A one-class YOLOv8n-seg checkpoint with random weights that emits hundreds of masks."""
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-seg.pt")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)
