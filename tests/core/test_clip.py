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


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def test_onnxruntime_towers_give_torchs_cosines_and_labels(clip_weights, onnx_cache):
    """Both towers on ONNX Runtime: embeddings and cosines within 1e-4 of torch's, the same best prompts."""
    from fastsam_core.prompts import with_labels

    img, shapes = make_scene(np.random.default_rng(11), 160, 200, n_shapes=(6, 9))
    batch = batch_from_masks([s.mask for s in shapes])
    prompts = ["a red star", "a cat", "a blue square", "grass"]
    torch_emb = ClipEmbedder(ARCH, clip_weights, sha256=sha256_file(clip_weights), device="cpu", chunk_size=3)
    ort_emb = ClipEmbedder(ARCH, clip_weights, sha256=sha256_file(clip_weights), device="cpu", chunk_size=3)
    assert ort_emb.use_onnxruntime(onnx_cache, threads=2) is ort_emb
    assert (torch_emb.runtime, ort_emb.runtime) == ("torch", "onnxruntime")
    crops = mask_crops(img, batch, range(len(batch)))

    ours, ref = ort_emb.embed_images(crops), torch_emb.embed_images(crops)
    assert ours.shape == ref.shape == (len(batch), torch_emb.dim) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(ort_emb.embed_texts(prompts) - torch_emb.embed_texts(prompts)).max() < 1e-4

    a = score_masks(img, batch, ort_emb, prompts, min_area=0)
    b = score_masks(img, batch, torch_emb, prompts, min_area=0)
    assert np.abs(a.columns["clip_cosine"] - b.columns["clip_cosine"]).max() < 1e-4
    assert np.abs(a.columns["clip_prob"] - b.columns["clip_prob"]).max() < 1e-4
    assert np.array_equal(a.columns["clip_cosine"].argmax(1), b.columns["clip_cosine"].argmax(1))
    for mode, threshold in (("best", 0.5), ("instances", 1 / len(prompts))):
        la, lb = with_labels(a, len(prompts), mode, threshold), with_labels(b, len(prompts), mode, threshold)
        assert np.array_equal(la.columns["label"], lb.columns["label"])
        assert (la.columns["label"] >= 0).any()  # the comparison is between real labels, not all unlabelled
    assert ort_emb.embed_images(iter(())).shape == (0, torch_emb.dim)


def test_onnx_exports_are_made_once_per_weights_and_remade_when_unreadable(clip_weights, tmp_path, monkeypatch):
    import fastsam_core.onnx_clip as onnx_clip

    made = []
    export = onnx_clip.export_tower
    monkeypatch.setattr(onnx_clip, "export_tower", lambda *a: made.append(a[1]) or export(*a))
    sha = sha256_file(clip_weights)
    first = ClipEmbedder(ARCH, clip_weights, sha256=sha, device="cpu").use_onnxruntime(tmp_path)
    assert made == ["image", "text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first.onnx.paths.values())
    assert all(sha in p.name and ARCH in p.name for p in first.onnx.paths.values())

    ClipEmbedder(ARCH, clip_weights, sha256=sha, device="cpu").use_onnxruntime(tmp_path)
    assert made == ["image", "text"]  # the second embedder opens the cached exports
    first.onnx.paths["text"].write_bytes(b"not an onnx file")
    again = ClipEmbedder(ARCH, clip_weights, sha256=sha, device="cpu").use_onnxruntime(tmp_path)
    assert made == ["image", "text", "text"]
    assert np.abs(again.embed_texts(["a cat"]) - first.embed_texts(["a cat"])).max() < 1e-6


def test_random_weights_are_named_by_their_values(tmp_path):
    from fastsam_core.onnx_clip import weights_id

    torch.manual_seed(1)
    a = ClipEmbedder(ARCH, device="cpu")
    torch.manual_seed(1)
    b = ClipEmbedder(ARCH, device="cpu")
    torch.manual_seed(2)
    c = ClipEmbedder(ARCH, device="cpu")
    assert weights_id(a.model) == weights_id(b.model) != weights_id(c.model)
    assert len(weights_id(a.model)) == 64
    with pytest.raises(ValueError, match="runs float32; set half to false"):
        ClipEmbedder(ARCH, device="cpu", half=True).use_onnxruntime(tmp_path)


def test_jobs_run_clip_on_onnxruntime_on_the_cpu_and_auto_falls_back_to_torch(
    clip_weights, tmp_path, monkeypatch, caplog
):
    import fastsam_core.onnx_clip as onnx_clip
    from schemas.job import ClipSpec, ModelSpec, StorageSpec
    from workers.labelling.stack import embedder_for

    monkeypatch.setenv("FASTSAM_LABEL_CACHE", str(tmp_path / "a"))
    spec = ClipSpec(arch=ARCH, weights=str(clip_weights), sha256=sha256_file(clip_weights))
    auto = embedder_for(spec, ModelSpec(device="cpu"), StorageSpec(), threads=1)
    assert auto.runtime == "onnxruntime" and auto.model is None  # the sessions hold the only copy
    assert sorted(p.parent.name for p in (tmp_path / "a").glob("**/clip-*.onnx")) == ["onnx", "onnx"]
    assert (
        embedder_for(spec.model_copy(update={"runtime": "torch"}), ModelSpec(device="cpu"), StorageSpec()).runtime
        == "torch"
    )

    def fails(*args):
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setenv("FASTSAM_LABEL_CACHE", str(tmp_path / "b"))
    monkeypatch.setattr(onnx_clip, "export_tower", fails)
    with caplog.at_level("WARNING", logger="workers.labelling.stack"):
        fallback = embedder_for(spec, ModelSpec(device="cpu"), StorageSpec())
    assert fallback.runtime == "torch" and fallback.model is not None
    assert caplog.messages == [
        f"CLIP {ARCH} runs on torch: its ONNX export failed (Unsupported: ONNX export of operator foo); "
        "set clip.runtime: torch to skip it"
    ]
    with pytest.raises(RuntimeError, match="operator foo"):
        embedder_for(spec.model_copy(update={"runtime": "onnxruntime"}), ModelSpec(device="cpu"), StorageSpec())
