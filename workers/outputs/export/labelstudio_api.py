"""A Label Studio export straight into a project on a Label Studio server, over its REST API.

`push` does what a person would do in the UI: create the project with the export's labeling
config (or, with --force, update an existing one), connect the run's source as the project's
storage so the images load (local files: a local-files storage of the source folder; S3: an S3
storage of the source bucket and prefix, without credentials: the server uses its own), import
the tasks with their predictions in chunks, and check that the server counts every task and
serves the first task's image.

The access token comes from the environment (LABEL_STUDIO_API_KEY, as for Label Studio's own
SDK): a legacy token is sent as `Token ...`, a personal access token (a JWT) is exchanged for a
short-lived access token first. It is never printed, logged or written anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx

from schemas.errors import LabelStudioError, LabelStudioProjectExistsError
from schemas.job import normalize_uri
from workers.outputs.export.base import ExportOptions, Stage
from workers.outputs.export.labelstudio import CONFIG, TASKS_LINES
from workers.runs.committed import CommittedRun

#: The environment variable holding the access token.
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
#: Tasks per import request (a request of a few MB; Label Studio advises against very large ones).
CHUNK = 200


class _Client:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=120.0, follow_redirects=False)
        self.http.headers["Authorization"] = self._authorization(token)

    def _authorization(self, token: str) -> str:
        if token.count(".") != 2:  # a legacy token
            return f"Token {token}"
        # A personal access token is a JWT refresh token: exchange it for an access token.
        data = self.request("POST", "/api/token/refresh", json={"refresh": token}, auth=False)
        return f"Bearer {data['access']}"

    def request(self, method: str, path: str, auth: bool = True, **kwargs):
        headers = {} if auth else {"Authorization": ""}
        try:
            r = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as e:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({type(e).__name__}); check --label-studio-url and that "
                "the server is up"
            ) from None
        if r.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the access token ({r.status_code}); set {TOKEN_ENV} to a valid "
                "token (Account & Settings; legacy tokens need the organization's legacy-token setting)"
            )
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} failed: {_why(r)}")
        return r.json() if r.content else None

    def close(self) -> None:
        self.http.close()


def _why(r: httpx.Response) -> str:
    """The server's own explanation of a refusal, on one line."""
    try:
        body = r.json()
        detail = body.get("validation_errors") or body.get("detail") or body
    except (ValueError, AttributeError):
        detail = r.text[:300]
    return f"{r.status_code} {json.dumps(detail) if not isinstance(detail, str) else detail}"


def _tasks(stage: Stage) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    with open(stage.folder / TASKS_LINES) as lines:
        for line in lines:
            chunk.append(json.loads(line))
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _storage(source_uri: str, project: int, storage: dict) -> tuple[str, dict]:
    """(API path, body) of the project storage that lets Label Studio load the run's images."""
    if source_uri.startswith("s3://"):
        bucket, _, prefix = source_uri[5:].partition("/")
        body = {"project": project, "bucket": bucket, "prefix": prefix.strip("/"), "use_blob_urls": True,
                "presign": True, "title": "fastsam-label source", "recursive_scan": True}  # fmt: skip
        if storage.get("region"):
            body["region_name"] = storage["region"]
        if storage.get("endpoint_url"):
            body["s3_endpoint"] = storage["endpoint_url"]
        return "/api/storages/s3", body
    path = normalize_uri(source_uri)
    return "/api/storages/localfiles", {
        "project": project,
        "path": path,
        "use_blob_urls": True,
        "recursive_scan": True,
        "title": "fastsam-label source",
    }


def push(stage: Stage, run: CommittedRun, options: ExportOptions) -> dict:
    """Create (or with --force, update) the project, connect its storage, import the staged tasks.

    Returns:
        {"url": the project's page, "project_id", "tasks": imported, "predictions": imported}.

    Raises:
        LabelStudioError: the server cannot be reached or refused a request (one line, the server's reason).
        LabelStudioProjectExistsError: the project exists and `options.force` is off.
    """
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise LabelStudioError(
            f"set {TOKEN_ENV} to your Label Studio access token (Account & Settings) to import into "
            f"{options.label_studio_url}; it is read from the environment only, never printed or stored"
        )
    client = _Client(options.label_studio_url, token)
    try:
        return _push(client, stage, run, options)
    finally:
        client.close()


def _push(client: _Client, stage: Stage, run: CommittedRun, options: ExportOptions) -> dict:
    title = options.project
    config = (stage.folder / CONFIG).read_text()
    found = client.request("GET", "/api/projects", params={"title": title})
    existing = [p for p in found.get("results", []) if p.get("title") == title]
    if existing and not options.force:
        raise LabelStudioProjectExistsError(
            f"Label Studio at {client.url} already has a project {title!r} (id {existing[0]['id']}); choose another "
            "--project, or pass --force to import into it (its labeling config is replaced by this export's)"
        )
    if existing:
        project = existing[0]["id"]
        before = client.request("GET", f"/api/projects/{project}").get("task_number", 0)
        client.request("PATCH", f"/api/projects/{project}", json={"label_config": config})
    else:
        description = f"fastsam-label run {run.layout.run_id} ({run.output.uri_of(run.layout.prefix)})"
        created = client.request(
            "POST", "/api/projects", json={"title": title, "label_config": config, "description": description}
        )
        project, before = created["id"], 0
    source = run.manifest.job["source"]["uri"]
    if options.image_url_template is None:  # images served by Label Studio from the run's source
        path, body = _storage(source, project, run.manifest.job.get("storage") or {})
        attached = client.request("GET", path, params={"project": project})
        if not any(s.get("path") == body.get("path") and s.get("bucket") == body.get("bucket") for s in attached):
            client.request("POST", path, json=body)
    tasks = predictions = 0
    first = None
    for chunk in _tasks(stage):
        answer = client.request("POST", f"/api/projects/{project}/import", params={"commit_to_project": "true"},
                                json=chunk)  # fmt: skip
        tasks += answer.get("task_count", 0)
        predictions += answer.get("prediction_count", 0)
        first = first or chunk[0]
    counted = client.request("GET", f"/api/projects/{project}").get("task_number", 0) - before
    if counted != tasks or tasks == 0:
        raise LabelStudioError(f"Label Studio at {client.url} counts {counted} new tasks in {title!r}, not {tasks}")
    if first is not None and options.image_url_template is None:
        _check_image(client, first["data"]["image"], source, options)
    return {
        "url": f"{client.url}/projects/{project}",
        "project_id": project,
        "tasks": tasks,
        "predictions": predictions,
    }


def _check_image(client: _Client, image: str, source: str, options: ExportOptions) -> None:
    """Fetch the first task's image through the server, as its labeling page will."""
    if not image.startswith("/data/local-files/"):
        return  # cloud storage: the browser fetches a presigned URL from the store itself
    r = client.http.get(image)
    if r.status_code != 200:
        root = normalize_uri(options.image_root or source)
        raise LabelStudioError(
            f"Label Studio at {client.url} does not serve the run's images ({r.status_code} for {image}): start it "
            f"with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to "
            f"{root} or a folder above it, and pass that folder as --image-root"
        )
