"""The Ray actor pool: N Labeler actors, shards dispatched with backpressure, dead actors replaced.

Each actor holds the models once (`num_cpus`/`num_gpus` from the job; fractional GPUs share a
device) and labels one shard at a time. `LabelerPool.label` is blocking and thread-safe: a caller
waits for an idle actor, so at most one shard per actor is in flight however many callers there
are (Prefect tasks, `map`'s threads). Actors are placed with the SPREAD strategy, one per node
where possible.

When an actor dies (its process or node is lost), Ray restarts it (`max_restarts=-1`) and the
shard it held goes to the next idle actor. Shard outputs are keyed by (run id, shard id) and
deterministic, so a shard labelled twice (a lost actor that had in fact finished) leaves one
copy of the same rows, whichever actor did the work.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from schemas.job import Job
from schemas.manifest import ShardSummary

log = logging.getLogger(__name__)


class PoolError(RuntimeError):
    """The pool cannot label: no actor could start, or a shard failed on every attempt."""


class ShardError(RuntimeError):
    """Labelling a shard raised inside the actor (not an actor death); retrying would not help."""


class LabelerActor:
    """The body of each Ray actor: one Labeler, built from the job's JSON."""

    def __init__(self, job_json: str):
        """Load the models (once per actor, and again after a restart)."""
        from workers.labeler import Labeler

        self.labeler = Labeler(Job.model_validate_json(job_json))

    def ready(self) -> str:
        """Host and pid of the actor, once its models are loaded."""
        return self.labeler.worker

    def node(self) -> str:
        """The Ray node id the actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def label_shard(self, run_id: str, shard_id: int) -> dict:
        """`Labeler.label_shard`, its summary as a dict."""
        return self.labeler.label_shard(run_id, shard_id).model_dump()


class LabelerPool:
    """N Labeler actors on a Ray cluster (an existing one by address, or a local one)."""

    def __init__(self, job: Job, start_timeout_s: float = 900.0):
        """Connect to (or start) Ray and start `job.compute.num_actors` actors.

        Args:
            job: the validated job; `compute` sets the actors' resources and the cluster address.
            start_timeout_s: how long `label` waits for any actor to be ready before giving up.
        """
        import ray

        c = job.compute
        self.job = job
        self.start_timeout_s = start_timeout_s
        self._started_ray = False
        if not ray.is_initialized():
            if c.ray_address is None and not os.environ.get("RAY_ADDRESS"):  # local, for this process: loopback
                ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
            else:
                ray.init(address=c.ray_address, logging_level=logging.WARNING)
            self._started_ray = True
        actor_cls = ray.remote(LabelerActor).options(
            num_cpus=c.cpus_per_actor,
            num_gpus=c.gpus_per_actor,
            max_restarts=-1,
            max_task_retries=0,  # the pool re-dispatches the shard itself, to any actor
            scheduling_strategy="SPREAD",
        )
        job_json = job.model_dump_json()
        self._actors = [actor_cls.remote(job_json) for _ in range(c.num_actors)]
        self._idle: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.redispatched = 0  # shards sent again because their actor was lost
        self._lost = 0  # actors that will not come back
        for actor in self._actors:
            self._when_ready(actor)

    def _when_ready(self, actor) -> None:
        """Return `actor` to the idle queue once it answers (after loading, or after a restart)."""

        def wait() -> None:
            import ray
            from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

            deadline = time.monotonic() + self.start_timeout_s
            died = 0
            while not self._closed.is_set():
                try:
                    worker = ray.get(actor.ready.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                except ActorUnavailableError:  # restarting: ask again shortly
                    if time.monotonic() < deadline:
                        time.sleep(0.5)
                        continue
                    error = f"still restarting after {self.start_timeout_s:.0f} s"
                except ActorDiedError as e:
                    # A call that reached the incarnation that just died fails too, although Ray is
                    # restarting the actor; only a failed constructor (or repeated deaths) is final.
                    died += 1
                    if "creation task" not in str(e) and died < 10 and time.monotonic() < deadline:
                        time.sleep(1.0)
                        continue
                    error = f"ActorDiedError: {e}"
                except GetTimeoutError:
                    error = f"not ready after {self.start_timeout_s:.0f} s (waiting for resources?)"
                except Exception as e:  # died for good: bad weights, out of memory at load, killed
                    error = f"{type(e).__name__}: {e}"
                else:
                    log.info("Labeler actor ready on %s", worker)
                    self._idle.put(actor)
                    return
                log.error("a Labeler actor is out of the pool: %s", error)
                with self._lock:
                    self._lost += 1
                return

        threading.Thread(target=wait, daemon=True, name="fastsam-actor-ready").start()

    def _take(self):
        deadline = time.monotonic() + self.start_timeout_s
        while not self._closed.is_set():
            if self._lost >= len(self._actors):
                raise PoolError("every Labeler actor failed to start or restart; see the errors logged above")
            try:
                return self._idle.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    c = self.job.compute
                    raise PoolError(
                        f"no Labeler actor was ready within {self.start_timeout_s:.0f} s; check that the cluster "
                        f"has {c.cpus_per_actor} CPU(s) and {c.gpus_per_actor} GPU(s) free per actor, and the "
                        "actor logs"
                    ) from None
        raise PoolError("the pool is closed")

    def label(self, run_id: str, shard_id: int) -> ShardSummary:
        """Label one shard on the next idle actor; blocks until done.

        Raises:
            ShardError: the Labeler raised (e.g. the output store refused the write).
            PoolError: actors died on every one of `compute.max_shard_attempts` attempts.
        """
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        attempts = self.job.compute.max_shard_attempts
        for attempt in range(1, attempts + 1):
            actor = self._take()
            try:
                out = ray.get(actor.label_shard.remote(run_id, shard_id))
            except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                log.warning("shard %d: actor lost (attempt %d/%d): %s; re-dispatching", shard_id, attempt, attempts, e)
                with self._lock:
                    self.redispatched += 1
                self._when_ready(actor)  # Ray restarts it; it takes work again once ready
                continue
            except RayTaskError as e:
                self._idle.put(actor)
                cause = e.cause if e.cause is not None else e
                raise ShardError(f"shard {shard_id} of run {run_id} failed: {type(cause).__name__}: {cause}") from None
            self._idle.put(actor)
            return ShardSummary.model_validate(out)
        raise PoolError(f"shard {shard_id} of run {run_id}: its actor died on all {attempts} attempts")

    def map(self, run_id: str, shard_ids: Iterable[int]) -> Iterator[tuple[int, ShardSummary | Exception]]:
        """Label many shards, yielding (shard id, summary or the exception) as each finishes."""
        ids = list(shard_ids)
        with ThreadPoolExecutor(max(len(self._actors), 1), thread_name_prefix="fastsam-dispatch") as pool:
            futures = {pool.submit(self.label, run_id, i): i for i in ids}
            for fut in as_completed(futures):
                err = fut.exception()
                yield futures[fut], (err if err is not None else fut.result())

    def close(self) -> None:
        """Stop the actors (and Ray, if this pool started it)."""
        import ray

        self._closed.set()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> LabelerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
