"""End to end, in one run: the loop people write today against `fastsam-label run`, interleaved rounds.

    python -m benchmarks.bench_pipeline [--preset default|dense] [--images 100] [--prompt-images 100]
                                   [--rounds 3] [--scale s] [--imgsz 1024] [--runtimes torch,onnxruntime]
                                   [--json out.json]

`--preset dense` is everything mode as real photos give it: about 300 masks per image (`--max-det
300`, `--conf 0.02`), photos of 0.3-12 MP (`DENSE_SIZES`, one 12 MP camera frame among them),
onnxruntime only, two rounds, without the large-image and orchestration parts; per image it splits
the segment stage into the forward pass and the rest. Any flag still overrides the preset.

The collection: the photos that ship in installed packages (ultralytics' bus and zidane,
matplotlib's grace_hopper) plus generated scenes of mixed sizes, as JPEG. The model: a one-class
YOLOv8-seg network at `--scale` ("s" is FastSAM-s's architecture) with random weights rescaled to
emit hundreds of masks, at `--conf` low enough that every image has at least 100 masks (up to
`--max-det`); the same file, parameters and retina masks on both sides. With prompts: CLIP ViT-B-32
with random weights (the same file on both sides), three prompts.

(a) the naive loop: ultralytics `FastSAM(...).predict` on each local file, masks encoded with
    pycocotools; with prompts, what ultralytics' predictor does (every mask of over 100 px cut out of
    the image, all crops of an image through CLIP in one stack, argmax per prompt), written with
    open_clip, since ultralytics' own text path installs CLIP from the network at run time.
(b) the pipeline: `fastsam-label run` (Prefect's temporary server, a private local Ray cluster,
    one actor), images from a loopback S3 endpoint (moto), Parquet written back; once per runtime.

Each side runs as its own process tree, sampled every 0.2 s for the peak RSS of every process.
Printed per variant: images/s, the ratio to (a), per-stage seconds, seconds in network forward
passes (measured alone on the same inputs), peak RSS by process; then the fixed start-up of a
one-image run and, with prompts, CLIP scoring against open_clip's raw forward time for the same
number of crops.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a person", "a bus", "a red shape"]
SIZES = [(480, 640), (720, 1280), (1024, 768), (600, 800), (1080, 1920), (375, 500), (900, 1200)]
CLIP_ARCH = "ViT-B-32"
#: Generated photo sizes of the dense preset (H, W): phone, HD, 3 MP and one 12 MP camera frame.
DENSE_SIZES = [(480, 640), (768, 1024), (1080, 1920), (1536, 2048), (720, 1280), (3024, 4032), (600, 800)]
#: Flag defaults per preset (flags given on the command line win).
PRESETS = {
    "default": {},
    "dense": {
        "images": 10, "prompt_images": 3, "rounds": 2, "conf": 0.02, "max_det": 300, "runtimes": "onnxruntime",
        "big": False, "overhead": False, "naive_memory_cap_mb": 20_000,
    },
}  # fmt: skip


# -- the collection -------------------------------------------------------------------------------


def shipped_photos() -> list[Path]:
    """Photos that ship inside installed packages."""
    import matplotlib
    import ultralytics

    found = [Path(ultralytics.__file__).parent / "assets" / n for n in ("bus.jpg", "zidane.jpg")]
    found.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [p for p in found if p.is_file()]


def write_collection(folder: Path, n: int, sizes: list[tuple[int, int]] = SIZES) -> list[Path]:
    """n JPEGs in `folder`: the shipped photos first, then generated scenes of `sizes` in turn."""
    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(shipped_photos()[:n]):
        out.append(folder / f"{i:04d}-{p.stem}.jpg")
        out[-1].write_bytes(p.read_bytes())
    rng = np.random.default_rng(0)
    for i in range(len(out), n):
        h, w = sizes[i % len(sizes)]
        img, _ = make_scene(rng, h, w, n_shapes=(8, 16))
        out.append(folder / f"{i:04d}-scene.jpg")
        Image.fromarray(img).save(out[-1], "JPEG", quality=90)
    return out


# -- process trees --------------------------------------------------------------------------------


def _label(proc, root_pid: int) -> str:
    try:
        cmd = proc.cmdline()
    except Exception:
        return "?"
    first = cmd[0] if cmd else proc.name()
    joined = " ".join(cmd)
    if proc.pid == root_pid:
        return "driver (CLI, flow)" if "fastsam-label" in joined or "flows.cli" in joined else "naive loop"
    if first.startswith("ray::"):
        return first.split()[0]
    for name in ("gcs_server", "raylet", "dashboard", "monitor.py", "log_monitor", "runtime_env", "default_worker"):
        if name in joined:
            return f"ray {name}"
    if "uvicorn" in joined and "prefect" in joined:
        return "prefect server"
    return proc.name()


class TreeSampler:
    """Peak RSS per process (labelled by role) of a process and its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.2, kill_above_mb: int | None = None):
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.kill_above = kill_above_mb * 2**20 if kill_above_mb else None
        self.killed = False
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except Exception:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except Exception:
                    continue
                total += rss
                label = _label(p, self.root.pid)
                self.peak[label] = max(self.peak.get(label, 0), rss)
            self.peak_total = max(self.peak_total, total)
            if self.kill_above and total > self.kill_above:  # before the machine runs out of memory
                self.killed = True
                for p in procs:
                    with contextlib.suppress(Exception):
                        p.kill()
                return
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_mb": {k: round(v / 2**20) for k, v in sorted(self.peak.items())},
            "peak_tree_mb": round(self.peak_total / 2**20),
            "killed_over_mb": round(self.kill_above / 2**20) if self.killed else None,
        }


def run_sampled(cmd: list[str], env: dict | None = None, kill_above_mb: int | None = None) -> tuple[float, str, dict]:
    """Run a command; (wall seconds, stdout, peak RSS by process). Killed when its tree passes `kill_above_mb`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(proc.pid, kill_above_mb=kill_above_mb)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    mem = sampler.stop()
    if mem["killed_over_mb"]:
        return wall, json.dumps({"images": 0, "masks": 0, "forward_s": 0.0, "clip_s": 0.0, "crops": 0}), mem
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}:\n{err[-3000:]}")
    return wall, out, mem


# -- (a) the naive loop, in a child process -------------------------------------------------------


def naive(args: argparse.Namespace) -> None:
    """The loop users write today; prints one JSON line of counts and timings."""
    import pycocotools.mask as mask_utils
    import torch
    from ultralytics import FastSAM

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    files = sorted(Path(args.dir).glob("*.jpg"))
    model = FastSAM(args.ckpt)
    clip = None
    if args.clip:
        import open_clip
        from PIL import Image

        clip, _, preprocess = open_clip.create_model_and_transforms(CLIP_ARCH, pretrained=args.clip)
        clip.eval()
        with torch.no_grad():
            text = clip.encode_text(open_clip.get_tokenizer(CLIP_ARCH)(PROMPTS))
            text = text / text.norm(dim=-1, keepdim=True)
    forward = clip_s = crops_n = masks_n = 0.0
    with open(args.out, "w") as out:
        for path in files:
            r = model.predict(
                str(path), imgsz=args.imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
                retina_masks=True, device="cpu", verbose=False,
            )[0]  # fmt: skip
            forward += r.speed["inference"] / 1000
            m = r.masks.data.bool() if r.masks is not None else torch.zeros((0, *r.orig_shape), dtype=torch.bool)
            rles = mask_utils.encode(np.asfortranarray(m.permute(1, 2, 0).numpy().astype(np.uint8)))
            masks_n += len(rles)
            best = None
            if clip is not None:
                ims, keep = [], []
                for i, b in enumerate(r.boxes.xyxy.tolist()):
                    x1, y1, x2, y2 = (int(v) for v in b)
                    if m[i].sum() <= 100:
                        continue
                    keep.append(i)
                    crop = r.orig_img[y1:y2, x1:x2] * m[i, y1:y2, x1:x2, None].numpy()
                    ims.append(Image.fromarray(crop[:, :, ::-1]))
                if ims:
                    t0 = time.perf_counter()
                    x = torch.stack([preprocess(im) for im in ims])
                    with torch.no_grad():
                        feats = clip.encode_image(x)
                    clip_s += time.perf_counter() - t0
                    crops_n += len(ims)
                    feats = feats / feats.norm(dim=-1, keepdim=True)
                    best = [keep[j] for j in (text @ feats.T).argmax(-1).tolist()]
            for i, rle in enumerate(rles):
                row = {"image": path.name, "mask": i, "counts": rle["counts"].decode()}
                if best is not None:
                    row["label"] = [PROMPTS[j] for j, k in enumerate(best) if k == i]
                out.write(json.dumps(row) + "\n")
    print(
        json.dumps({"images": len(files), "masks": masks_n, "forward_s": forward, "clip_s": clip_s, "crops": crops_n})
    )


# -- network forward passes alone, in a child process ---------------------------------------------


def forward_only(args: argparse.Namespace) -> None:
    """Seconds of FastSAM forward passes alone on the collection (batches of one shape, as the
    Labeler makes them), and of CLIP ViT-B-32 forward passes for `--crops` crops; one JSON line."""
    import torch
    from PIL import Image

    from fastsam_core import FastSAMModel
    from fastsam_core.everything import letterbox

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = FastSAMModel.load(args.ckpt, allow_unpinned=True, device="cpu")
    if args.runtime == "onnxruntime":
        model = model.use_onnxruntime(Path(args.dir).parent / "onnx", threads=torch.get_num_threads())
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(args.dir).glob("*.jpg"))]
    by_shape: dict = {}
    for im in images:
        by_shape.setdefault(im.shape, []).append(im)
    batches = [g[i : i + args.batch] for g in by_shape.values() for i in range(0, len(g), args.batch)]
    model.warmup(args.imgsz)
    seg = 0.0
    for b in batches:
        x = torch.from_numpy(letterbox(b, args.imgsz, model.stride)).permute(0, 3, 1, 2).contiguous().float() / 255
        t0 = time.perf_counter()
        model.forward(x)
        seg += time.perf_counter() - t0
    clip = 0.0
    if args.crops:
        import open_clip

        net = open_clip.create_model(CLIP_ARCH, pretrained=args.clip).eval()
        x = torch.rand(64, 3, 224, 224)
        with torch.inference_mode():
            net.encode_image(x[:2])
            for s in range(0, args.crops, 64):
                t0 = time.perf_counter()
                net.encode_image(x[: min(64, args.crops - s)], normalize=True)
                clip += time.perf_counter() - t0
    print(json.dumps({"segment_forward_s": seg, "clip_forward_s": clip}))


# -- (b) the pipeline -----------------------------------------------------------------------------


def pipeline_job(endpoint: str, prefix: str, out: str, ckpt: Path, sha: str, args, runtime: str, clip: tuple | None):
    job = {
        "source": {"uri": f"s3://bench/{prefix}/"},
        "output": f"s3://bench/{out}",
        "model": {
            "checkpoint": str(ckpt), "sha256": sha, "imgsz": args.imgsz, "conf": args.conf, "iou": args.iou,
            "max_det": args.max_det, "runtime": runtime,
        },
        "compute": {"num_actors": 1, "shard_size": 25, "batch_size": 4},
        "storage": {"endpoint_url": endpoint},
    }  # fmt: skip
    if clip is not None:
        job["prompts"] = PROMPTS
        job["clip"] = {"arch": CLIP_ARCH, "weights": str(clip[0]), "sha256": clip[1]}
    return job


def run_pipeline(job: dict, run_id: str, work: Path, env: dict, client) -> dict:
    path = work / f"{run_id}.json"
    path.write_text(json.dumps(job))
    cli = str(Path(sys.executable).parent / "fastsam-label")
    wall, stdout, mem = run_sampled([cli, "run", str(path), "--run-id", run_id], env)
    s = json.JSONDecoder().raw_decode(stdout[stdout.index("\n{") + 1 :])[0]  # the summary the CLI prints
    return {
        "wall_s": wall, "images": s["counts"]["labelled"], "masks": s["counts"]["masks"],
        "stage_s": s["stage_seconds"], "flow_s": s["seconds"], **mem,
    }  # fmt: skip


# -- the run --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("naive", "forward"):
        ap = argparse.ArgumentParser()
        for name in ("--dir", "--ckpt", "--clip", "--out", "--runtime"):
            ap.add_argument(name)
        for name, kind in (("--imgsz", int), ("--conf", float), ("--iou", float), ("--max-det", int)):
            ap.add_argument(name, type=kind)
        ap.add_argument("--batch", type=int, default=4)
        ap.add_argument("--crops", type=int, default=0)
        a = ap.parse_args(argv[1:])
        (naive if argv[0] == "naive" else forward_only)(a)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--prompt-images", type=int, default=100, help="images of the run with prompts (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", default="s", help="YOLOv8 scale of the random network (s = FastSAM-s)")
    ap.add_argument("--imgsz", type=int, default=1024)
    ap.add_argument("--conf", type=float, default=0.05)
    ap.add_argument("--iou", type=float, default=0.9)
    ap.add_argument("--max-det", type=int, default=120)
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--big", action=argparse.BooleanOptionalAction, default=True,
                    help="also label one 6000x4000 image with up to 300 masks on both sides (peak RSS)")  # fmt: skip
    ap.add_argument("--naive-memory-cap-mb", type=int, default=16_000,
                    help="stop the naive loop on the large image past this RSS (it needs ~22 GB)")  # fmt: skip
    ap.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure per-shard orchestration cost and 1 against 2 actors")  # fmt: skip
    ap.set_defaults(**PRESETS[ap.parse_known_args(argv)[0].preset])
    args = ap.parse_args(argv)
    sizes = DENSE_SIZES if args.preset == "dense" else SIZES

    import open_clip
    import torch

    from fastsam_core.checkpoints import sha256_file
    from tests.support.helpers import make_random_checkpoint
    from tests.support.servers import loopback_s3

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env["FASTSAM_LABEL_CACHE"] = str(work / "cache")
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    calibrate = args.imgsz if args.preset == "dense" else 320  # (the dense preset's masks as bench_segment's)
    ckpt = make_random_checkpoint(work / f"fastsam-{args.scale}-random.pt", imgsz=calibrate, scale=args.scale)
    sha = sha256_file(ckpt)
    torch.manual_seed(0)
    clip_path = work / "clip-vit-b-32-random.pt"
    torch.save(open_clip.create_model(CLIP_ARCH, pretrained=None).state_dict(), clip_path)
    clip = (clip_path, sha256_file(clip_path))

    server, endpoint, client = loopback_s3("bench")
    sets = {"all": args.images, "prompted": args.prompt_images, "one": 1}
    dirs = {}
    for name, n in sets.items():
        if n:
            files = write_collection(work / name, n, sizes) if name != "one" else write_collection(work / "one", 1)
            dirs[name] = work / name
            for f in files:
                client.put_object(Bucket="bench", Key=f"{name}/{f.name}", Body=f.read_bytes())
    runtimes = args.runtimes.split(",")
    print(f"# collection: {args.images} images ({len(shipped_photos())} shipped photos), model yolov8{args.scale}-seg "
          f"random at imgsz {args.imgsz}, conf {args.conf}, max_det {args.max_det}, retina masks; "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip

    py = sys.executable
    common = ["--ckpt", str(ckpt), "--imgsz", str(args.imgsz), "--conf", str(args.conf), "--iou", str(args.iou),
              "--max-det", str(args.max_det)]  # fmt: skip
    results: dict = {"args": vars(args) | {"json": str(args.json) if args.json else None}, "variants": {}}
    parts = [("no prompts", "all", None)] + ([("prompts", "prompted", clip)] if args.prompt_images else [])
    for title, name, with_clip in parts:
        for r in range(args.rounds):
            variants = ["naive"] + [f"pipeline {rt}" for rt in runtimes]
            for v in variants:
                key = f"{title} | {v}"
                if v == "naive":
                    cmd = [py, "-m", "benchmarks.bench_pipeline", "naive", "--dir", str(dirs[name]),
                           "--out", str(work / "naive.jsonl"), *common]  # fmt: skip
                    cmd += ["--clip", str(with_clip[0])] if with_clip else []
                    wall, out, mem = run_sampled(cmd, env, kill_above_mb=args.naive_memory_cap_mb)
                    got = json.loads(out.strip().splitlines()[-1]) | {"wall_s": wall, **mem}
                else:
                    rt = v.split()[1]
                    run_id = f"bench-{name}-{rt}-{r}"
                    job = pipeline_job(endpoint, name, f"out-{name}-{rt}", ckpt, sha, args, rt, with_clip)
                    got = run_pipeline(job, run_id, work, env, client)
                results["variants"].setdefault(key, []).append(got)
                print(f"round {r + 1} {key}: {got['wall_s']:.1f} s", flush=True)
                save(results, args.json)
    # forward passes alone and the one-image start-up, once per runtime
    for rt in runtimes:
        crops = 0
        if args.prompt_images:
            crops = args.prompt_images * args.max_det  # upper bound, replaced by the real count below
            rows = results["variants"].get(f"prompts | pipeline {rt}")
            crops = _scored_crops(client, f"out-prompted-{rt}", f"bench-prompted-{rt}-0") if rows else crops
        for name in [n for n in ("all", "prompted") if n in dirs]:
            cmd = [py, "-m", "benchmarks.bench_pipeline", "forward", "--dir", str(dirs[name]), "--runtime", rt,
                   "--clip", str(clip[0]), "--crops", str(crops if name == "prompted" else 0), *common]  # fmt: skip
            _, out, _ = run_sampled(cmd, env)
            results.setdefault("forward", {})[f"{name} {rt}"] = json.loads(out.strip().splitlines()[-1]) | {
                "crops": crops
            }
        one = pipeline_job(endpoint, "one", f"out-one-{rt}", ckpt, sha, args, rt, None)
        results.setdefault("one_image", {})[rt] = [
            run_pipeline(one, f"bench-one-{rt}-{i}", work, env, client) for i in range(2)
        ]
    if args.big:
        results["big"] = big_image(endpoint, work, env, client, ckpt, sha, args, common)
    if args.overhead:
        results["overhead"] = overhead(endpoint, work, env, client)
    server.stop()
    save(results, args.json)
    report(results)


def save(results: dict, path: Path | None) -> None:
    """Write what is measured so far (a long run that fails late keeps its numbers)."""
    if path is not None:
        path.write_text(json.dumps(results, indent=1))


def big_image(endpoint: str, work: Path, env: dict, client, ckpt: Path, sha: str, args, common: list) -> dict:
    """One 6000x4000 photo-sized scene with max_det 300: peak RSS of each process, both sides."""
    from PIL import Image

    from fastsam_core.testing.synthetic import make_scene

    folder = work / "big"
    folder.mkdir()
    img, _ = make_scene(np.random.default_rng(6000), 4000, 6000, n_shapes=(30, 40))
    Image.fromarray(img).save(folder / "0000-big.jpg", "JPEG", quality=90)
    client.put_object(Bucket="bench", Key="big/0000-big.jpg", Body=(folder / "0000-big.jpg").read_bytes())
    big = argparse.Namespace(**{**vars(args), "max_det": 300})
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_pipeline",
        "naive",
        "--dir",
        str(folder),
        "--out",
        str(work / "big.jsonl"),
    ]
    cmd += [*common[:-2], "--max-det", "300"]
    wall, out, mem = run_sampled(cmd, env, kill_above_mb=args.naive_memory_cap_mb)
    got = {"naive": json.loads(out.strip().splitlines()[-1]) | {"wall_s": wall, **mem}}
    job = pipeline_job(endpoint, "big", "out-big", ckpt, sha, big, "torch", None)
    got["pipeline torch"] = run_pipeline(job, "bench-big", work, env, client)
    return got


def overhead(endpoint: str, work: Path, env: dict, client) -> dict:
    """Per-shard cost of Prefect and Ray, and 1 against 2 actors: the shipped small model on 32 small
    scenes (labelling is cheap, so what is left is orchestration), one run per setting."""
    from tests.support.helpers import scene_bytes

    for i in range(32):
        client.put_object(Bucket="bench", Key=f"small/{i:02d}.jpg", Body=scene_bytes(i, 240, 320))
    out = {}
    for name, compute in {
        "1 shard of 32, 1 actor": {"shard_size": 32, "num_actors": 1},
        "32 shards of 1, 1 actor": {"shard_size": 1, "num_actors": 1},
        "8 shards of 4, 1 actor": {"shard_size": 4, "num_actors": 1},
        "8 shards of 4, 2 actors": {"shard_size": 4, "num_actors": 2},
    }.items():
        job = {
            "source": {"uri": "s3://bench/small/"}, "output": f"s3://bench/out-small-{len(out)}",
            "compute": {**compute, "batch_size": 4}, "storage": {"endpoint_url": endpoint},
        }  # fmt: skip
        out[name] = run_pipeline(job, f"bench-small-{len(out)}", work, env, client)
    return out


def _scored_crops(client, out: str, run_id: str) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    n = 0
    for obj in client.list_objects_v2(Bucket="bench", Prefix=f"{out}/runs/{run_id}/masks/")["Contents"]:
        t = pq.read_table(
            io.BytesIO(client.get_object(Bucket="bench", Key=obj["Key"])["Body"].read()), columns=["clip_cosine"]
        )
        n += t.num_rows - pc.sum(pc.is_null(t["clip_cosine"])).as_py()
    return n


def report(results: dict) -> None:
    """Print the medians of the rounds per variant, ratios to the naive loop, forward shares, start-up."""
    med = statistics.median
    print()
    for key, rows in results["variants"].items():
        title, variant = key.split(" | ")
        naive_rows = results["variants"][f"{title} | naive"]
        n = rows[0]["images"]
        wall = med(r["wall_s"] for r in rows)
        ratio = med(r["wall_s"] for r in naive_rows) / wall
        name = "all" if title == "no prompts" else "prompted"
        rounds = ", ".join(f"{r['wall_s']:.1f}" for r in rows)
        print(f"{key}: {n} images, {int(rows[0]['masks'])} masks, wall {wall:.1f} s (rounds {rounds}), "
              f"{n / wall:.2f} images/s, x{ratio:.2f} vs naive")  # fmt: skip
        if variant == "naive":
            fwd = med(r["forward_s"] + r["clip_s"] for r in rows)
            print(f"    network forward (ultralytics' inference timer + CLIP): {fwd:.1f} s = {fwd / wall:.0%} of wall")
        else:
            f = results["forward"][f"{name} {variant.split()[1]}"]
            fwd = f["segment_forward_s"] + f["clip_forward_s"]
            stages = {k: round(med(r["stage_s"].get(k, 0) for r in rows), 1) for k in rows[0]["stage_s"]}
            flow = med(r["flow_s"] for r in rows)
            print(f"    stages (s, summed over images): {stages}; flow {flow:.1f} s; "
                  f"outside the flow (CLI, Prefect server, preflight) {wall - flow:.1f} s")  # fmt: skip
            print(f"    network forward alone (same inputs): {fwd:.1f} s = {fwd / wall:.0%} of wall")
            seg, seg_fwd = stages.get("segment", 0.0), f["segment_forward_s"]
            print(f"    segment stage per image: {seg / n:.3f} s = forward {seg_fwd / n:.3f} s + the rest "
                  f"{(seg - seg_fwd) / n:.3f} s (rest / forward {(seg - seg_fwd) / seg_fwd:.2f}, "
                  f"segment / forward {seg / seg_fwd:.2f})")  # fmt: skip
            if f["clip_forward_s"]:
                score = stages.get("score", 0.0)
                print(f"    CLIP: scoring stage {score:.1f} s vs open_clip raw forward {f['clip_forward_s']:.1f} s "
                      f"for {f['crops']} crops: x{score / f['clip_forward_s']:.2f} ({f['crops'] / score:.1f} vs "
                      f"{f['crops'] / f['clip_forward_s']:.1f} crops/s)")  # fmt: skip
        peaks = {k: max(r["peak_rss_mb"].get(k, 0) for r in rows) for k in rows[0]["peak_rss_mb"]}
        print(f"    peak RSS MB by process: {peaks}; whole tree {max(r['peak_tree_mb'] for r in rows)}")
    big = results.get("big")
    if big:
        for side, r in big.items():
            print(
                f"6000x4000, {int(r['masks'])} masks, {side}: wall {r['wall_s']:.1f} s, peak RSS MB {r['peak_rss_mb']}"
            )
    small = results.get("overhead")
    if small:
        one, many = small["1 shard of 32, 1 actor"], small["32 shards of 1, 1 actor"]
        per_shard = (many["flow_s"] - one["flow_s"]) / 31
        print(f"orchestration: 32 one-image shards {many['flow_s']:.1f} s vs one 32-image shard {one['flow_s']:.1f} s "
              f"(flow time): {per_shard:.2f} s per extra shard")  # fmt: skip
        for name, r in small.items():
            print(f"    {name}: flow {r['flow_s']:.1f} s, wall {r['wall_s']:.1f} s, peak tree {r['peak_tree_mb']} MB")
    for rt, rows in results.get("one_image", {}).items():
        best = min(rows, key=lambda r: r["wall_s"])
        print(f"one-image run, {rt}: wall {best['wall_s']:.1f} s, flow {best['flow_s']:.1f} s, "
              f"labelling stages {sum(best['stage_s'].values()):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
