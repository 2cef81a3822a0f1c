"""The job: everything a labeling run needs to know, as one frozen, validated pydantic model.

A job is loaded from YAML or JSON (`load_job`) with environment-variable overrides, or built in
code (`Job(source=..., output=...)`). Bad configuration fails at once with `JobError`, whose message
names each bad field (dotted path, e.g. `model.imgsz`) and how to fix it.

Credentials never belong in a job: object-store access comes from the environment, a named
profile, or instance roles, exactly as boto3 finds them.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from wcmatch import glob as wcglob

from schemas.errors import JobError, UriError
from schemas.params import EverythingParams
from schemas.uri import Uri

#: Image file extensions labelled by default (lower case, with the dot).
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: The label exports give masks that no prompt labelled. A prompt may not take this name (compared
#: ignoring case), so the catch-all category never merges with a prompt's in COCO, Label Studio or YOLO.
UNLABELLED = "unlabelled"

#: Glob flags of `SourceSpec.include`: `*`, `?` and `[...]` stay within one folder, `**` spans any
#: number of folders (none included), `{a,b}` alternates; case-sensitive; dot-files match like others.
_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.CASE | wcglob.BRACE | wcglob.DOTGLOB


def job_error(what: str, problems: list[str]) -> JobError:
    """One line for one problem ("job is not valid: model.iou: ..."), else a line per problem."""
    if len(problems) == 1:
        return JobError(f"{what}: {problems[0].strip()}")
    return JobError(f"{what} ({len(problems)} problems):\n" + "\n".join(problems))


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_uri(value: str) -> str:
    try:
        Uri.parse(value)
    except UriError as e:
        raise ValueError(str(e)) from None
    return value


def _check_sha(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if not _SHA256.match(v):
        raise ValueError(f"sha256 must be 64 hex digits, but got {value!r}; compute it with `sha256sum FILE`")
    return v


#: A sha256 hex digest, normalised to lower case.
Sha256 = Annotated[str | None, AfterValidator(_check_sha)]
#: s3://bucket/prefix, a local path, or a file:// URI.
UriField = Annotated[str, AfterValidator(_check_uri)]


class SourceSpec(_Spec):
    """Where the images are.

    Attributes:
        uri: s3://bucket/prefix or a local folder; every object under it is considered.
        include: glob patterns on the key relative to `uri`; a key is labelled when any matches
            (empty = all). `*`, `?` and `[abc]` match within one folder; `**` as a whole segment
            matches any number of folders, none included; `{jpg,png}` alternates. Case-sensitive.
            "cams/**/*.jpg" matches cams/a.jpg and cams/d1/d2/a.jpg; "cams/*.jpg" matches
            cams/a.jpg but not cams/d1/a.jpg.
        extensions: lower-case extensions (with the dot) to label; matched case-insensitively.
        manifest: instead of listing `uri`, read the keys from this table (s3:// or a local path):
            Parquet, CSV with a header row, or JSON Lines, with a `key` column (relative to `uri`) or
            a `uri` column (under `uri`), and optional `etag` and `size` columns. `include` and
            `extensions` still apply. What a data pipeline or a catalog query hands over.
        inventory: instead of listing `uri`, read an S3 Inventory report: the s3:// URI of its
            manifest.json (CSV or Parquet files); objects under `uri` in its source bucket are labelled.
    """

    uri: UriField
    include: tuple[str, ...] = ()
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    manifest: UriField | None = None
    inventory: UriField | None = None

    @model_validator(mode="after")
    def _one_listing(self) -> SourceSpec:
        if self.manifest is not None and self.inventory is not None:
            raise ValueError("set source.manifest or source.inventory, not both: each lists the whole source")
        if self.inventory is not None and not (self.inventory.startswith("s3://") and self.uri.startswith("s3://")):
            raise ValueError(
                "source.inventory is an S3 Inventory report: give the s3:// URI of its manifest.json, for an s3:// "
                "source.uri"
            )
        return self

    @field_validator("include")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            if not pattern or pattern.startswith("/"):
                raise ValueError(f"include pattern {pattern!r} must be a non-empty key pattern relative to source.uri")
            try:
                wcglob.translate(pattern, flags=_GLOB_FLAGS)
            except Exception as e:  # wcmatch's errors for malformed patterns
                raise ValueError(f"include pattern {pattern!r} is not a valid glob: {e}") from None
        return v

    @functools.cached_property
    def _include_re(self) -> re.Pattern | None:
        if not self.include:
            return None
        regexes, _ = wcglob.translate(list(self.include), flags=_GLOB_FLAGS)
        return re.compile("|".join(f"(?:{r})" for r in regexes))

    @field_validator("extensions")
    @classmethod
    def _ext(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("extensions is empty, so nothing would be labelled; list at least one, e.g. ['.jpg']")
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in v)

    def wants(self, rel_key: str) -> bool:
        """Whether an object (key relative to `uri`) is to be labelled."""
        if not rel_key.lower().endswith(self.extensions):
            return False
        return self._include_re is None or self._include_re.match(rel_key) is not None


class ModelSpec(_Spec):
    """The FastSAM checkpoint and everything-mode parameters.

    Attributes:
        checkpoint: path or s3:// URI of a FastSAM/YOLOv8-seg checkpoint (.pt); None = the shipped
            small model (offline demo and tests only: it knows synthetic shapes, not the world).
        sha256: pinned hash of `checkpoint`; required unless it is a known checkpoint or
            `allow_unpinned`.
        allow_unpinned: load a checkpoint without a pinned hash (it is a pickle: trusted files only).
        imgsz: model input size in pixels, a multiple of 32; None = the checkpoint's own (1024 for FastSAM).
        conf, iou, max_det, retina: everything-mode settings; defaults and ranges in
            `schemas.params.EverythingParams`.
        device: "cpu", "cuda", "cuda:1"; None = CUDA when present.
        half: float16 inference; None = on CUDA only (torch runtime only).
        runtime: what runs the network: "torch", "onnxruntime" (exported from the verified
            checkpoint once per machine into the weights cache; CPU, CUDA or TensorRT provider), or
            "auto": onnxruntime on the CPU (its forward pass is about 1.4x as fast as torch's
            there), torch on CUDA or with `half`. Letterbox, NMS, masks, RLE and prompts are the
            same code on all.
    """

    checkpoint: UriField | None = None
    sha256: Sha256 = None
    allow_unpinned: bool = False
    imgsz: int | None = None
    conf: float = EverythingParams.conf
    iou: float = EverythingParams.iou
    max_det: int = EverythingParams.max_det
    retina: bool = EverythingParams.retina
    device: str | None = None
    half: bool | None = None
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"

    @field_validator("imgsz", "conf", "iou", "max_det")
    @classmethod
    def _everything(cls, v, info):
        if v is not None:
            EverythingParams.check(info.field_name, v)
        return v

    @model_validator(mode="after")
    def _runtime(self) -> ModelSpec:
        if self.runtime == "onnxruntime" and self.half:
            raise ValueError(
                "half is not available with runtime onnxruntime (float32); set half: false or runtime: torch"
            )
        return self


class ClipSpec(_Spec):
    """The model that scores masks against text prompts.

    Attributes:
        arch: an open_clip architecture ("ViT-B-32", ...), or "color-words": a deterministic offline
            stand-in that only understands colour words (tests and the demo).
        weights: path or s3:// URI of the open_clip weights; required for real architectures.
        sha256: pinned hash of `weights`; required unless `allow_unpinned`.
        allow_unpinned: load weights without a pinned hash.
        min_area: masks of this many pixels or fewer are not scored (their scores are null).
        batch_size: crops per CLIP forward pass (bounds memory).
        max_masks: score at most this many masks per image, those with the highest detector score x
            stability; the others keep null scores and no label. None = every mask (full recall);
            a number trades recall for speed, as CLIP crops cost far more than segmentation on a CPU.
        keep_embeddings: write each scored mask's CLIP image embedding (a unit vector) to the
            `embeddings` table, so `fastsam-label reprompt` can score new prompts without reading an
            image. CLIP runs even without prompts when this is set.
        embedding_dtype: how the embeddings are stored: "float16" (half the size; cosines within
            about 1e-3 of float32's: docs/benchmarks.md) or "float32" (exact).
        runtime: what runs the image and text towers: "torch", "onnxruntime" (float32, exported from
            the verified weights once per machine into the weights cache), or "auto": onnxruntime on
            the CPU, torch on CUDA or with `model.half`. The device and precision follow `model`'s.
    """

    arch: str = "ViT-B-32"
    weights: UriField | None = None
    sha256: Sha256 = None
    allow_unpinned: bool = False
    min_area: int = Field(100, ge=0)
    batch_size: int = Field(64, ge=1, le=4096)
    max_masks: int | None = Field(None, ge=1)
    keep_embeddings: bool = False
    embedding_dtype: Literal["float16", "float32"] = "float16"
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"


class SelectionSpec(_Spec):
    """How text prompts turn into labels.

    Attributes:
        mode: "instances": every mask gets its best prompt when that prompt's probability is at least
            `threshold` and it beats every negative prompt; "best": FastSAM's text mode, one mask per
            prompt (the most similar); "none": scores only, no labels.
        threshold: minimum probability (softmax over all prompts) for "instances", in [0, 1].
    """

    mode: Literal["instances", "best", "none"] = "instances"
    threshold: float = Field(0.5, ge=0, le=1)


class ComputeSpec(_Spec):
    """How the work is cut and where it runs.

    Attributes:
        shard_size: source objects per shard (the unit of retry and resume), >= 1.
        num_actors: Labeler actors (each holds the models once), >= 1.
        gpus_per_actor: GPUs per actor; fractions share a GPU (0.5 = two actors per GPU); 0 = CPU.
        cpus_per_actor: CPUs reserved per actor (> 0), and the CPU threads its models use; None = an
            equal share of the cluster's CPUs (the machine's, for a local run), at least 1.
        batch_size: images per model forward pass, >= 1.
        read_threads: threads reading and decoding ahead of the model, per actor.
        prefetch: most images read or decoded ahead of the model, per actor.
        read_ahead_pixels: most decoded pixels (width x height) in flight per actor, in decoding or
            waiting for the model: bounds memory by size, not count. An image larger than this is
            decoded alone.
        ray_address: an existing cluster ("ray://host:10001", "host:6379", "auto"); None = start a local one.
        max_shard_attempts: actor deaths on one shard before it is split to find the object that kills
            its actor (recorded as worker_lost, the rest labelled), >= 1.
    """

    shard_size: int = Field(256, ge=1, le=1_000_000)
    num_actors: int = Field(1, ge=1, le=10_000)
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_actor: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1, le=1024)
    read_threads: int = Field(4, ge=1, le=256)
    prefetch: int = Field(8, ge=1, le=4096)
    read_ahead_pixels: int = Field(100_000_000, ge=1)
    ray_address: str | None = None
    max_shard_attempts: int = Field(2, ge=1, le=100)

    def actor_cpus(self, available: float) -> float:
        """CPUs per actor: `cpus_per_actor`, or an equal whole share of `available` CPUs (at least 1)."""
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor
        return float(max(1, int(available // self.num_actors)))


class LimitsSpec(_Spec):
    """Guards against huge objects and decompression bombs. Objects over a limit become `too_large` rows.

    Attributes:
        max_bytes: largest object read, in bytes.
        max_pixels: largest image decoded, width x height after reading the header.
    """

    max_bytes: int = Field(256 * 2**20, ge=1)
    max_pixels: int = Field(100_000_000, ge=1)


class StorageSpec(_Spec):
    """How to reach S3 (or an S3-compatible store). No credentials here: boto3 finds them.

    Attributes:
        endpoint_url: e.g. "http://127.0.0.1:9000" for MinIO; None = AWS.
        region: AWS region; None = boto3's default chain.
        profile: a named profile from ~/.aws/config; None = the default chain.
        retry_mode: botocore retry mode, "standard" or "adaptive" (client-side rate limiting).
        max_attempts: botocore attempts per request, including the first; transient errors (5xx,
            SlowDown, timeouts, connection resets) are retried with exponential backoff, permanent ones
            (AccessDenied, NoSuchBucket, bad credentials) never.
        connect_timeout_s: seconds to open a connection before the attempt counts as failed.
        read_timeout_s: seconds without a byte from the server before the attempt counts as failed.
        object_timeout_s: seconds to read one source object whole (S3 or a local file); a read still
            going then (a hung mount, a body trickling in) becomes a read_error row and the shard goes on.
        multipart_threshold: uploads at least this many bytes use multipart upload.
        list_concurrency: LIST requests in flight when a bucket is listed: its folders (common
            prefixes, found a level or two down) are listed at once and merged in key order, with
            the result of one sequential listing; 1 = one request at a time.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(8, ge=1, le=50)
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    read_timeout_s: float = Field(60.0, gt=0, le=3600)
    object_timeout_s: float = Field(300.0, gt=0, le=86400)
    multipart_threshold: int = Field(64 * 2**20, ge=5 * 2**20)
    list_concurrency: int = Field(8, ge=1, le=256)


class Job(_Spec):
    """One labeling job.

    Attributes:
        source: where the images are (see `SourceSpec`).
        output: s3://bucket/prefix or a local folder; run outputs go under `{output}/runs/{run_id}/`.
        prompts: text prompts, in order; CLIP score columns follow this order. Empty = no CLIP.
        negative_prompts: prompts that veto a label when they match better ("background", "shadow").
        prompt_table: optional sidecar table (.parquet or .jsonl, path or s3:// URI) of per-image
            point and box prompts; see `workers.labelling.sidecar`.
        prompt_table_sha256: pinned hash of the prompt table; the flow sets it when the run starts, so
            every actor labels with the table that was checked.
        model, clip, selection, compute, limits, storage: see their classes.
        tables: append each committed run to the Delta Lake tables under `{output}/tables/`
            (workers.tables.delta), what consumers read across runs.
        reprompt_of: set by `fastsam-label reprompt` only: the committed run whose masks and stored
            CLIP embeddings this run scores against its prompts (no image is read).
    """

    source: SourceSpec
    output: UriField
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    prompt_table: UriField | None = None
    prompt_table_sha256: Sha256 = None
    model: ModelSpec = ModelSpec()
    clip: ClipSpec = ClipSpec()
    selection: SelectionSpec = SelectionSpec()
    compute: ComputeSpec = ComputeSpec()
    limits: LimitsSpec = LimitsSpec()
    storage: StorageSpec = StorageSpec()
    tables: bool = True
    reprompt_of: str | None = None

    @field_validator("prompt_table")
    @classmethod
    def _table(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.lower().endswith((".parquet", ".jsonl")):
            raise ValueError(f"prompt_table {v!r} must be a .parquet or .jsonl file")
        return v

    @field_validator("prompts", "negative_prompts")
    @classmethod
    def _prompts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(p.strip() for p in v)
        if any(not p for p in cleaned):
            raise ValueError("prompts must not be empty strings")
        odd = [p for p in cleaned if not p.isprintable()]
        if odd:
            raise ValueError(
                f"prompt {odd[0]!r} holds control characters (tabs, line breaks, ...), which review tools cannot "
                "show; write it on one line"
            )
        folded = [p.casefold() for p in cleaned]
        dup = sorted({p for p, f in zip(cleaned, folded, strict=True) if folded.count(f) > 1})
        if dup:
            raise ValueError(
                f"prompts must be distinct ignoring case, but {dup} repeat; keep one of each (as labels they would "
                "split one class in two)"
            )
        if UNLABELLED in folded:
            raise ValueError(
                f"{UNLABELLED!r} is the category exports give masks no prompt labelled; name the prompt differently"
            )
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        if self.negative_prompts and not self.prompts:
            raise ValueError("negative_prompts are given without prompts; add prompts or remove negative_prompts")
        negatives = {n.casefold() for n in self.negative_prompts}
        overlap = [p for p in self.prompts if p.casefold() in negatives]
        if overlap:
            raise ValueError(f"{overlap} are both prompts and negative_prompts; keep each in one list")
        if self.uses_clip and self.clip.arch != "color-words" and self.clip.weights is None:
            raise ValueError(
                f"clip.weights is required to score prompts or keep embeddings with {self.clip.arch}: give a path "
                "or s3:// URI and clip.sha256, or set clip.arch to color-words (the offline stand-in)"
            )
        if self.clip.runtime == "onnxruntime" and self.model.half:
            raise ValueError(
                "clip.runtime onnxruntime runs float32, but model.half asks for float16; set model.half: false "
                "or clip.runtime: torch"
            )
        if (
            self.model.checkpoint
            and Uri.parse(self.model.checkpoint).is_s3
            and not (self.model.sha256 or self.model.allow_unpinned)
        ):
            raise ValueError("model.sha256 is required for an s3:// checkpoint (it is fetched, then unpickled)")
        if normalize_uri(self.source.uri) == normalize_uri(self.output):
            raise ValueError("output must differ from source.uri, or the outputs would be listed as inputs")
        return self

    @property
    def uses_clip(self) -> bool:
        """Whether the job runs CLIP: it has prompts, or keeps mask embeddings."""
        return bool(self.prompts) or self.clip.keep_embeddings

    @property
    def all_prompts(self) -> tuple[str, ...]:
        """Positive prompts then negatives: the column order of the CLIP score lists."""
        return self.prompts + self.negative_prompts


def normalize_uri(uri: str) -> str:
    """One spelling per location (`schemas.uri.Uri`): s3:// without a trailing slash, local paths resolved."""
    return str(Uri.parse(uri))


#: How a run consults earlier runs: "off" (label every listed object), "labels" (skip objects an
#: earlier run labelled at the same ETag with the same labelling fingerprint), "source" (skip objects
#: labelled at the same ETag, whatever labelled them).
IncrementalMode = Literal["off", "labels", "source"]


def incremental_mode(value: bool | str | None) -> IncrementalMode:
    """A mode from what callers pass: True means "labels", False/None "off".

    Raises:
        JobError: an unknown mode, naming the choices.
    """
    if value is None or value is False:
        return "off"
    if value is True:
        return "labels"
    if value not in ("off", "labels", "source"):
        raise JobError(f"incremental must be one of off, labels, source, but got {value!r}")
    return value
