"""Operator settings: what code a run may load and where it may run, fixed outside the job.

A job arrives as a run parameter (a Prefect deployment run, a CLI flag, a job file), so anyone who
can start a run controls it. The settings below decide which pickles are unpickled and which
cluster receives the work; they come from the environment of the process that runs the flow (the
deployment's or work pool's environment, or the shell of whoever runs the CLI):

    FASTSAM_LABEL_ALLOW_UNPINNED=1      runs may set model/clip allow_unpinned (default: refused)
    FASTSAM_LABEL_RAY_ADDRESS=ADDRESS   the only Ray cluster runs use ("local": a private local cluster);
                                        a job naming another compute.ray_address is refused
    FASTSAM_LABEL_WEIGHTS_FROM=P1,P2    weights and checkpoints only from under these URI prefixes or folders
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from schemas.errors import JobError
from schemas.job import Job, job_error, normalize_uri

ENV_ALLOW_UNPINNED = "FASTSAM_LABEL_ALLOW_UNPINNED"
ENV_RAY_ADDRESS = "FASTSAM_LABEL_RAY_ADDRESS"
ENV_WEIGHTS_FROM = "FASTSAM_LABEL_WEIGHTS_FROM"


class OperatorPolicy(BaseModel):
    """What the operator allows runs to do.

    Attributes:
        allow_unpinned: runs may load weights without a pinned sha256.
        ray_address: the cluster every run uses; None = the job's compute.ray_address decides.
        weights_from: normalised URI prefixes weights must come from; empty = anywhere.
    """

    model_config = ConfigDict(frozen=True)

    allow_unpinned: bool = False
    ray_address: str | None = None
    weights_from: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorPolicy:
        """The policy set by the FASTSAM_LABEL_* operator variables (see the module docstring)."""
        env = os.environ if environ is None else environ
        flag = env.get(ENV_ALLOW_UNPINNED, "").strip().lower()
        if flag not in ("", "0", "1", "true", "false", "yes", "no"):
            raise JobError(f"{ENV_ALLOW_UNPINNED}={flag!r} is not a boolean; set it to 1 or 0")
        prefixes = tuple(normalize_uri(p.strip()) for p in env.get(ENV_WEIGHTS_FROM, "").split(",") if p.strip())
        return cls(
            allow_unpinned=flag in ("1", "true", "yes"),
            ray_address=env.get(ENV_RAY_ADDRESS, "").strip() or None,
            weights_from=prefixes,
        )

    def apply(self, job: Job) -> Job:
        """The job as this policy lets it run (the operator's cluster filled in).

        Raises:
            JobError: listing every setting the policy refuses, with the fix.
        """
        problems = []
        for field, value in (
            ("model.allow_unpinned", job.model.allow_unpinned),
            ("clip.allow_unpinned", job.clip.allow_unpinned),
        ):
            if value and not self.allow_unpinned:
                problems.append(
                    f"  {field}: unpinned weights are not allowed here (the operator has not set "
                    f"{ENV_ALLOW_UNPINNED}=1); pin the file's sha256 instead"
                )
        asked = job.compute.ray_address
        if self.ray_address is not None and asked is not None and asked != self.ray_address:
            problems.append(
                f"  compute.ray_address: this deployment runs on {self.ray_address!r} ({ENV_RAY_ADDRESS}); "
                f"a run cannot send work to {asked!r}; remove the field"
            )
        if self.weights_from:
            for field, uri in (("model.checkpoint", job.model.checkpoint), ("clip.weights", job.clip.weights)):
                if uri is not None and not any(_under(normalize_uri(uri), p) for p in self.weights_from):
                    allowed = ", ".join(self.weights_from)
                    problems.append(
                        f"  {field}: {uri} is not under an allowed location ({ENV_WEIGHTS_FROM}: {allowed})"
                    )
        if problems:
            raise job_error("job is not allowed by the operator's settings", problems)
        if self.ray_address is None or asked == self.ray_address:
            return job
        return job.model_copy(update={"compute": job.compute.model_copy(update={"ray_address": self.ray_address})})


def _under(uri: str, prefix: str) -> bool:
    return uri == prefix or uri.startswith(prefix.rstrip("/") + "/")
