"""Reading a job: from a YAML or JSON file, command-line fields and environment overrides, into one `Job`.

Bad configuration fails at once with `JobError`, whose message names each bad field (dotted path,
e.g. `model.imgsz`) and how to fix it. A key given twice in a file is refused, not silently last-wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.errors import DuplicateKeyError, JobError
from schemas.job import Job, _Spec, job_error

#: Prefix of environment variables that override job fields; `__` separates nesting levels:
#: FASTSAM_LABEL__MODEL__IMGSZ=640 sets `model.imgsz`. Values are parsed as YAML scalars/lists.
ENV_PREFIX = "FASTSAM_LABEL__"


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str] | None = None) -> dict:
    """Job fields set by FASTSAM_LABEL__A__B=value variables, as a nested dict."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path:
            _set_path(out, path, yaml.safe_load(raw) if raw.strip() else None)
    return out


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field; check the spelling (credentials never go in the job: use the environment or a profile)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_type":
        msg += "; quote it in YAML (digits alone read as a number)"
    got = err.get("input")
    # Our own checks (value_error) already quote the value; pydantic's built-in ones do not.
    if err["type"] not in ("missing", "extra_forbidden", "value_error") and not isinstance(got, dict | list):
        msg += f" (got {got!r})"
    return f"  {where}: {msg}" if where else f"  {msg}"


def parse_spec(cls: type[_Spec], data: Mapping, what: str) -> Any:
    """Validate one section of a job (a `ModelSpec`, ...) from a mapping.

    Raises:
        JobError: listing every bad field, as for a whole job.
    """
    try:
        return cls.model_validate(dict(data))
    except ValidationError as e:
        raise job_error(f"{what} is not valid", [_describe(err) for err in e.errors(include_url=False)]) from None


def parse_job(data: Mapping, environ: Mapping[str, str] | None = None, origin: str = "job") -> Job:
    """Validate a job from a mapping, environment overrides applied on top.

    Raises:
        JobError: listing every bad field by dotted path, with the fix.
    """
    merged = _merge(dict(data), env_overrides(environ))
    try:
        return Job.model_validate(merged)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors(include_url=False)]
        raise job_error(f"{origin} is not valid", lines) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(
                    f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "keep one, as a repeated key would silently replace the first"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_json(text: str) -> Any:
    """JSON, refusing a key given twice in one object."""

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise DuplicateKeyError(f"key {k!r} is given twice in one object; keep one")
            out[k] = v
        return out

    return json.loads(text, object_pairs_hook=unique)


def load_job(path: str | Path | None = None, environ: Mapping[str, str] | None = None, **fields: Any) -> Job:
    """Load a job from a YAML/JSON file (optional), then `fields`, then environment overrides.

    Args:
        path: a .yaml/.yml/.json file; None = start from `fields` only.
        environ: environment to read overrides from (default: os.environ).
        **fields: top-level fields set in code (e.g. from command-line flags); nested dicts merge.
    """
    data: dict = {}
    origin = "job"
    if path is not None:
        p = Path(path)
        origin = f"job file {p}"
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise JobError(f"cannot read {origin}: {e.strerror}; check the path") from None
        try:
            data = _read_json(text) if p.suffix.lower() == ".json" else yaml.load(text, Loader=_UniqueKeyLoader)
        except DuplicateKeyError as e:
            raise JobError(f"{origin}: {e}") from None
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise JobError(f"{origin} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise JobError(f"{origin} must hold a mapping of fields, but holds a {type(data).__name__}")
    return parse_job(_merge(data, {k: v for k, v in fields.items() if v is not None}), environ, origin)
