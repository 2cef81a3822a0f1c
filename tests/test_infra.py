"""infra/prefect.yaml: every deployment points at the flow, its job validates, its schedules parse."""

import importlib
from pathlib import Path

import pytest
import yaml

from schemas import parse_job

PREFECT_YAML = Path(__file__).resolve().parents[1] / "infra" / "prefect.yaml"
DEPLOYMENTS = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_is_runnable(deployment):
    from prefect.client.schemas.schedules import CronSchedule

    from flows.label import label_collection

    path, _, name = deployment["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert getattr(module, name) is label_collection
    job = parse_job(deployment["parameters"]["job"], environ={})
    assert job.output.startswith("s3://") and job.prompts
    assert set(deployment["parameters"]) <= {"job", "run_id", "incremental"}
    assert job.compute.ray_address is None  # an operator setting (FASTSAM_LABEL_RAY_ADDRESS), not a parameter
    assert not job.model.allow_unpinned and not job.clip.allow_unpinned
    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert deployment["work_pool"]["name"] == "fastsam-label"
