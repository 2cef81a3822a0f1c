"""Opening a run: the one way from a job to a run that can be labelled. The CLI, the demo and the flow use it.

    prepare(job, run_id)       validate the job once (a dict is parsed; a Job is taken as it is),
                               hold it to the operator's policy, preflight it (source, output, weights
                               and prompt table checked in seconds, their hashes pinned into the job),
                               fingerprint it, and refuse a run id that another job planned
    open_planner(prepared, ...)  inside the flow, holding the run's lease: the plan, made as a stream or resumed

`prepare` runs before Prefect and Ray start when the CLI calls it, so a wrong job fails in seconds;
the flow receives the `PreparedRun` and trusts it. A flow started any other way (a deployment run)
gets a job dict and prepares it itself, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from flows.preflight import preflight
from schemas.errors import JobError
from schemas.fingerprint import InputHashes, fingerprint
from schemas.job import IncrementalMode, Job
from schemas.job_file import parse_job
from schemas.layout import RunLayout
from schemas.operator import OperatorPolicy
from workers import runs
from workers.storage import ObjectStore, open_store


@dataclass(frozen=True)
class PreparedRun:
    """A job that can run, bound to its run id.

    Attributes:
        job: validated, held to the operator's policy, with the verified hashes pinned
            (model.sha256, clip.sha256, prompt_table_sha256): what every actor receives.
        hashes: the verified hashes.
        layout: the run's keys.
        fingerprint: what decides the run's outputs (schemas.fingerprint), as its plan records it.
    """

    job: Job
    hashes: InputHashes
    layout: RunLayout
    fingerprint: dict

    @property
    def output(self) -> ObjectStore:
        """The job's output store."""
        return open_store(self.job.output, self.job.storage)


def allowed(job: dict | Job) -> Job:
    """The job validated (a dict is parsed; a Job is taken as it is) and held to the operator's policy.

    Raises:
        JobError: the job is invalid, or the operator does not allow what it asks for.
    """
    spec = job if isinstance(job, Job) else parse_job(job, environ={})
    return OperatorPolicy.from_env().apply(spec)


def refuse_reprompt_field(job: Job) -> None:
    """Refuse a labelling job that sets `reprompt_of` (only `fastsam-label reprompt` sets it).

    Raises:
        JobError: naming the field and the command to use.
    """
    if job.reprompt_of is not None:
        raise JobError(
            f"reprompt_of: {job.reprompt_of!r} is set by `fastsam-label reprompt` only; remove it to label images, "
            f"or run `fastsam-label reprompt {job.reprompt_of} --output OUTPUT --prompt ...`"
        )


def prepare(job: dict | Job, run_id: str | None = None) -> PreparedRun:
    """Validate, hold to the operator's policy, preflight and pin a job for a run (see the module docstring).

    Args:
        job: the job; a dict is validated here (environment overrides are applied by whoever built
            it: `schemas.job.load_job` does), a `Job` is taken as validated.
        run_id: an existing run to resume, or None for a new run id.

    Raises:
        JobError: the job is invalid, the operator refuses it, or the run was planned by another job.
        CheckpointError, PromptTableError: the weights or the prompt table cannot be used.
        StoreError: the source or output cannot be reached, listed or written.
    """
    layout = RunLayout(run_id or runs.new_run_id())
    spec = allowed(job)
    refuse_reprompt_field(spec)
    checked = preflight(spec, layout)
    prepared = PreparedRun(checked.job, checked.hashes, layout, fingerprint(checked.job, checked.hashes))
    planned = runs.load_plan(prepared.output, layout) or runs.load_planning(prepared.output, layout)
    if planned is not None:  # a resume: with the job that planned the run only
        runs.check_same_job(planned, prepared.fingerprint)
    return prepared


def open_planner(prepared: PreparedRun, incremental: bool | IncrementalMode) -> runs.Planner:
    """The run's planner: it makes the plan as a stream, resumes an unfinished one, or loads the sealed one.

    Call its `run` while holding the run's lease (workers.runs.lease.RunLease).
    """
    job = prepared.job
    source = open_store(job.source.uri, job.storage)
    return runs.Planner(job, source, prepared.output, prepared.layout, prepared.fingerprint, incremental)
