import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from fastsam_core import ClipEmbedder, score_masks
from fastsam_core.checkpoints import sha256_file
from fastsam_core.scoring import mask_crops
from fastsam_core.testing.synthetic import make_scene
from schemas.errors import CheckpointError
from tests.support.helpers import batch_from_masks

ARCH = "ViT-S-32"  # a real open_clip architecture, small enough for the CPU


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(model.state_dict(), path)
    return path


def test_scorer_embeddings_equal_open_clip_on_the_same_crops(clip_weights):
    img, shapes = make_scene(np.random.default_rng(5), 120, 150, n_shapes=(3, 5))
    batch = batch_from_masks([s.mask for s in shapes])
    emb = ClipEmbedder(ARCH, clip_weights, sha256=sha256_file(clip_weights), device="cpu", chunk_size=2)
    crops = mask_crops(img, batch, range(len(batch)))
    ours = emb.embed_images(crops)

    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(clip_weights))
    model.eval()
    with torch.no_grad():
        ref = model.encode_image(torch.stack([preprocess(Image.fromarray(c)) for c in crops]))
        ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
        tok = open_clip.get_tokenizer(ARCH)(["a red star", "a cat"])
        ref_t = model.encode_text(tok)
        ref_t = (ref_t / ref_t.norm(dim=-1, keepdim=True)).numpy()
    assert ours.shape == (len(batch), model.visual.output_dim)
    assert np.allclose(ours, ref, atol=1e-5)
    texts = emb.embed_texts(["a red star", "a cat"])
    assert np.allclose(texts, ref_t, atol=1e-5)
    assert emb.embed_texts(["a red star", "a cat"]) is texts  # cached per prompt list

    scored = score_masks(img, batch, emb, ["a red star", "a cat"], min_area=0)
    assert np.allclose(scored.columns["clip_cosine"], ours @ ref_t.T, atol=1e-5)


def test_crops_fill_outside_the_mask():
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = 255
    m = np.zeros((20, 30), bool)
    m[5:10, 10:25] = True
    m[5, 10] = False
    crop = mask_crops(img, batch_from_masks([m]), [0], margin=0.0, fill=(1, 2, 3))[0]
    assert crop.shape == (15, 15, 3)  # 5x15 box padded to a square
    assert (crop[5:10][m[5:10, 10:25]] == 255).all()
    assert (crop[5, 0] == (1, 2, 3)).all() and (crop[0, 0] == (1, 2, 3)).all()


def test_unpinned_or_wrong_weights_are_refused(clip_weights):
    with pytest.raises(CheckpointError, match="no pinned sha256"):
        ClipEmbedder(ARCH, clip_weights)
    with pytest.raises(CheckpointError, match="not the one you pinned"):
        ClipEmbedder(ARCH, clip_weights, sha256="1" * 64)
    with pytest.raises(CheckpointError, match="unknown to open_clip"):
        ClipEmbedder("ViT-Nope", clip_weights)


def test_pipelined_embedding_equals_one_forward_per_chunk(clip_weights):
    """Crops pulled lazily and prepared one chunk ahead give the same vectors as preparing them first."""
    img, shapes = make_scene(np.random.default_rng(7), 120, 150, n_shapes=(4, 6))
    batch = batch_from_masks([s.mask for s in shapes])
    emb = ClipEmbedder(ARCH, clip_weights, sha256=sha256_file(clip_weights), device="cpu", chunk_size=2)
    crops = mask_crops(img, batch, range(len(batch)))
    pulled = []

    def lazily():
        for c in crops:
            pulled.append(1)
            yield c

    ours = emb.embed_images(lazily())
    inputs = torch.stack([emb.preprocess(Image.fromarray(c)) for c in crops])
    with torch.inference_mode():
        ref = [emb.model.encode_image(inputs[s : s + 2], normalize=True) for s in range(0, len(crops), 2)]
    assert len(pulled) == len(crops)
    assert np.array_equal(ours, torch.cat(ref).numpy())
    assert emb.embed_images(iter(())).shape == (0, emb.model.visual.output_dim)
