"""infra/: every manifest passes its check offline, and a copy with a typo in a field name fails it.

Each check returns the problems it finds (empty = passes), so the same check runs on the real file
and on a deliberately broken copy.
"""

import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from flows.cli import build_parser
from schemas import parse_job
from tests.support import ROOT

INFRA = ROOT / "infra"
RAYCLUSTER_SCHEMA = ROOT.parent / "shared" / "schemas" / "raycluster-v1.schema.json"
BIN = Path(sys.executable).parent
#: Prefect's names of the flows, by function.
FLOW_NAMES = {"label_collection": "label-collection", "export_run": "export-run"}
#: Keys a deployment in prefect.yaml may have (Prefect ignores unknown ones, so a typo would pass it).
DEPLOYMENT_KEYS = {"name", "description", "entrypoint", "work_pool", "schedules", "parameters", "concurrency_limit",
                   "pull", "tags", "version", "enforce_parameter_schema", "paused"}  # fmt: skip


def _broken(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    """A copy of `source` with the first `old` replaced by `new` (a typo in a field name)."""
    text = source.read_text()
    assert old in text, (source, old)
    copy = tmp_path / source.name
    copy.write_text(text.replace(old, new, 1))
    return copy


# -- KubeRay and core Kubernetes objects ------------------------------------------------------------


def raycluster_problems(path: Path) -> list[str]:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    problems = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("kind") == "RayCluster":
            validator = jsonschema.Draft7Validator(schema)
            problems += [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return problems


def core_problems(path: Path) -> list[str]:
    """kubernetes-validate --strict; a core kind it has no schema for is a problem too."""
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True)
    out = done.stdout + done.stderr
    problems = [line for line in out.splitlines() if line.startswith(("ERROR", "WARN"))]
    return problems + ([f"exit {done.returncode}"] if done.returncode else [])


def _core_files() -> list[Path]:
    files = sorted((INFRA / "kuberay").glob("*.yaml"))
    return [f for f in files if all(d.get("apiVersion", "").count("/") == 0 for d in yaml.safe_load_all(f.read_text()))]


def test_the_raycluster_validates_against_the_kuberay_crd_schema(tmp_path):
    path = INFRA / "kuberay/raycluster.yaml"
    assert raycluster_problems(path) == []
    cluster = yaml.safe_load(path.read_text())
    head, (gpu,) = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["authOptions"] == {"mode": "token"}
    assert gpu["rayStartParams"]["num-gpus"] == "1" and 0 == gpu["minReplicas"] < gpu["maxReplicas"]
    worker = gpu["template"]["spec"]
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu" and worker["nodeSelector"]
    for spec in (head["template"]["spec"], worker):
        for container in spec["containers"]:
            assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]
            assert not [e for e in container.get("env", []) if re.search(r"SECRET|PASSWORD|TOKEN|KEY", e["name"])]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    broken = _broken(tmp_path, path, "workerGroupSpecs:", "workerGroupSpec:")
    assert any("workerGroupSpec" in p for p in raycluster_problems(broken))


def test_core_kubernetes_objects_validate_strictly(tmp_path):
    files = _core_files()
    assert [f.name for f in files] == ["namespace.yaml", "serviceaccount.yaml"]
    for f in files:
        assert core_problems(f) == [], f
    assert core_problems(_broken(tmp_path, INFRA / "kuberay/serviceaccount.yaml", "metadata:", "metdata:")) != []


# -- compose --------------------------------------------------------------------------------------


def compose_problems(path: Path) -> list[str]:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    problems = [] if done.returncode == 0 else [(done.stdout + done.stderr).strip()[-500:]]
    compose = yaml.safe_load(path.read_text())
    for name, service in compose.get("services", {}).items():
        for port in service.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
        env = service.get("environment", {})
        for key, value in env.items() if isinstance(env, dict) else []:
            if re.search(r"SECRET|PASSWORD|TOKEN", key) and not str(value).startswith("${"):
                problems.append(f"{name}: {key} is written in the file, not taken from the environment")
    return problems


def test_the_compose_file_validates_against_the_compose_spec(tmp_path):
    path = INFRA / "compose.yaml"
    assert compose_problems(path) == []
    services = yaml.safe_load(path.read_text())["services"]
    assert {"minio", "prefect-server", "ray-head", "ray-worker", "flow-worker"} <= set(services)
    typo = ("  ray-worker:\n    <<: *image\n", "  ray-worker:\n    <<: *image\n    restrat: always\n")
    assert compose_problems(_broken(tmp_path, path, *typo)) != []
    assert compose_problems(_broken(tmp_path, path, '"127.0.0.1:9000:9000"', '"9000:9000"')) != []


# -- prefect.yaml ---------------------------------------------------------------------------------


def _prefect_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_deployments_point_at_the_flows_and_their_parameters_validate():
    from flows.export import export_run
    from flows.label import label_collection

    deployments = _prefect_yaml(INFRA / "prefect.yaml")["deployments"]
    assert [d["name"] for d in deployments] == ["nightly", "backfill", "export-label-studio"]
    for d in deployments:
        assert set(d) <= DEPLOYMENT_KEYS, set(d) - DEPLOYMENT_KEYS
        path, _, name = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert flow in (label_collection, export_run)
        assert set(d["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        if flow is label_collection:
            job = parse_job(d["parameters"]["job"], environ={})
            assert job.output.startswith("s3://") and job.prompts
            assert job.compute.ray_address is None  # an operator setting, not a parameter
            assert not job.model.allow_unpinned and not job.clip.allow_unpinned
        env = d["work_pool"].get("job_variables", {}).get("env", {})
        assert "FASTSAM_LABEL_ALLOW_UNPINNED" not in env and not [k for k in env if "TOKEN" in k or "SECRET" in k]
    nightly = deployments[0]
    assert nightly["concurrency_limit"] == 1 and nightly["parameters"]["incremental"] is True
    assert nightly["work_pool"]["job_variables"]["env"]["FASTSAM_LABEL_RAY_ADDRESS"].startswith("ray://")


def deployed_problems(path: Path, env: dict) -> list[str]:
    """Deploy every deployment of `path` to the server in `env`, read them back, and compare."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode:
        return [f"prefect deploy failed: {(done.stdout + done.stderr)[-1500:]}"]
    problems = []

    async def read() -> None:
        async with get_client() as client:
            for d in _prefect_yaml(path)["deployments"]:
                if set(d) - DEPLOYMENT_KEYS:
                    problems.append(f"{d.get('name')}: unknown keys {sorted(set(d) - DEPLOYMENT_KEYS)}")
                flow_name = FLOW_NAMES[d["entrypoint"].split(":")[1]]
                got = await client.read_deployment_by_name(f"{flow_name}/{d['name']}")
                if got.parameters != d.get("parameters", {}):
                    problems.append(f"{d['name']}: parameters differ")
                if got.work_pool_name != d["work_pool"]["name"]:
                    problems.append(f"{d['name']}: work pool {got.work_pool_name}")
                if (got.job_variables or {}) != d["work_pool"].get("job_variables", {}):
                    problems.append(f"{d['name']}: job variables differ")
                crons = sorted(s.schedule.cron for s in got.schedules)
                if crons != sorted(s["cron"] for s in d.get("schedules", [])):
                    problems.append(f"{d['name']}: schedules {crons}")
                limit = got.global_concurrency_limit.limit if got.global_concurrency_limit else None
                if limit != d.get("concurrency_limit"):
                    problems.append(f"{d['name']}: concurrency limit {limit}")

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        asyncio.run(read())
    return problems


def test_prefect_yaml_deploys_to_a_real_server(prefect_server, tmp_path):
    _, env = prefect_server
    prefect = str(BIN / "prefect")
    for pool, kind in (("fastsam-label-k8s", "kubernetes"), ("fastsam-label", "process")):
        subprocess.run([prefect, "work-pool", "create", pool, "--type", kind], env=env, check=True, capture_output=True)
    assert deployed_problems(INFRA / "prefect.yaml", env) == []
    broken = _broken(tmp_path, INFRA / "prefect.yaml", "    schedules:", "    schedulez:")
    # Prefect ignores the unknown key and keeps the schedule of the earlier deploy: both are caught.
    assert deployed_problems(broken, env) == [
        "nightly: unknown keys ['schedulez']",
        "nightly: schedules ['0 3 * * *']",
    ]


# -- Dockerfile -----------------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==", 1) for d in deps if "==" in d)


def dockerfile_problems(path: Path) -> list[str]:
    text = path.read_text()
    problems = []
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    pins = _pins()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        if args.get(arg) != pins[package]:
            problems.append(f"{arg}={args.get(arg)} but pyproject pins {package}=={pins[package]}")
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    if ":" not in base or base.endswith(":latest"):
        problems.append(f"base image {base} is not pinned by a tag")
    users = re.findall(r"^USER (\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the image runs as {users[-1] if users else 'root'}")
    if re.search(r"AKIA[0-9A-Z]{16}|(SECRET|PASSWORD|TOKEN)[A-Z_]*\s*=\s*\S", text):
        problems.append("a secret-like string")
    if "pip install ." not in text or "COPY" not in text:
        problems.append("the project is not installed from pyproject.toml")
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    if entry != ["fastsam-label"]:
        problems.append(f"entrypoint {entry}")
    try:
        build_parser().parse_args(cmd)
    except SystemExit as e:
        if e.code != 0:
            problems.append(f"the CLI refuses {cmd}")
    if "HEALTHCHECK" not in text:
        problems.append("no healthcheck")
    return problems


def test_the_dockerfile(tmp_path, capsys):
    assert dockerfile_problems(INFRA / "Dockerfile") == []
    capsys.readouterr()  # --help printed the usage
    assert dockerfile_problems(_broken(tmp_path, INFRA / "Dockerfile", "USER 10001:10001", "USER root")) != []
    assert dockerfile_problems(_broken(tmp_path, INFRA / "Dockerfile", "ARG TORCH_VERSION=", "ARG TORCH_VERSON=")) != []
    assert dockerfile_problems(_broken(tmp_path, INFRA / "Dockerfile", 'CMD ["--help"]', 'CMD ["--hlep"]')) != []


# -- IAM policy -----------------------------------------------------------------------------------


def policy_problems(path: Path) -> list[str]:
    policy = json.loads(path.read_text())
    problems = [] if set(policy) == {"Version", "Statement"} else [f"top-level keys {sorted(policy)}"]
    allowed = {"Sid", "Effect", "Action", "Resource", "Condition"}
    for st in policy.get("Statement", []):
        where = st.get("Sid", "?")
        if set(st) - allowed or not {"Effect", "Action", "Resource"} <= set(st):
            problems.append(f"{where}: keys {sorted(st)}")
            continue
        if st["Effect"] != "Allow":
            problems.append(f"{where}: effect {st['Effect']}")
        for action in st["Action"]:
            if "*" in action or not action.startswith("s3:"):
                problems.append(f"{where}: action {action} is wider than needed")
        for resource in st["Resource"]:
            if resource in ("*", "arn:aws:s3:::*") or resource.endswith(":::*"):
                problems.append(f"{where}: resource {resource}")
    return problems


def test_the_iam_policy_is_least_privilege(tmp_path):
    path = INFRA / "iam-policy.json"
    assert policy_problems(path) == []
    statements = json.loads(path.read_text())["Statement"]
    by_resource = {r: set(st["Action"]) for st in statements for r in st["Resource"]}
    assert by_resource["arn:aws:s3:::my-images/cameras/*"] == {"s3:GetObject"}  # the source is only read
    assert {"s3:PutObject", "s3:DeleteObject"} <= by_resource["arn:aws:s3:::my-labels/fastsam/*"]
    assert by_resource["arn:aws:s3:::my-models/FastSAM-x.pt"] == {"s3:GetObject"}
    assert policy_problems(_broken(tmp_path, path, '"Effect"', '"Efect"')) != []
    assert policy_problems(_broken(tmp_path, path, '"s3:GetObject"', '"s3:*"')) != []


# -- README ---------------------------------------------------------------------------------------


def cluster_command_problems(readme: Path) -> list[str]:
    """Every `fastsam-label ...` line of the README's cluster section, parsed by the CLI's own parser."""
    text = readme.read_text()
    section = text[text.index("## Running on a cluster") :]
    section = section[: section.index("\n## ", 1)]
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("fastsam-label ")]
    problems = [] if len(commands) >= 4 else [f"only {len(commands)} fastsam-label commands"]
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            problems.append(command)
    return problems


def test_every_cluster_command_in_the_readme_is_one_the_cli_accepts(tmp_path, capsys):
    assert cluster_command_problems(ROOT / "README.md") == []
    broken = _broken(tmp_path, ROOT / "README.md", "fastsam-label status first", "fastsam-label status --run first")
    assert cluster_command_problems(broken) == ["fastsam-label status --run first --output s3://my-labels/fastsam"]
    capsys.readouterr()


@pytest.mark.parametrize("name", ["Dockerfile", "compose.yaml", "prefect.yaml", "iam-policy.json"])
def test_no_credentials_in_infra(name):
    text = (INFRA / name).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\w|BEGIN (RSA )?PRIVATE KEY", text, re.I)
