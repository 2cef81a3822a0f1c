"""The Ray actor pool: N Labeler actors, shards dispatched with backpressure, dead actors replaced.

Each actor holds the models once (`num_cpus`/`num_gpus` from the job; fractional GPUs share a
device) and labels one shard at a time. `LabelerPool.label` is blocking and thread-safe: a caller
waits for an idle actor, so at most one shard per actor is in flight however many callers there
are (Prefect tasks, `map`'s threads). Actors are placed with the SPREAD strategy, one per node
where possible.

Retries live here for actor deaths only. When an actor dies (its process or node is lost), Ray
restarts it (`max_restarts=-1`) and the shard goes to the next idle actor as a new attempt; the
commit protocol (workers.runs.attempts) keeps exactly one attempt's output. When actors die
`compute.max_shard_attempts` times on one shard, an object in it is probably killing them (memory,
a crash in native code): workers.ray.isolation splits the shard until that object is found; it is
recorded as `worker_lost` and the rest is labelled. An error raised inside the Labeler is not
retried here (`ShardError`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from schemas.errors import PoolError, ShardError, is_transient
from schemas.job import Job
from schemas.layout import RunLayout
from schemas.manifest import ShardSummary
from workers.labelling import rows
from workers.ray import cluster
from workers.ray.isolation import isolate
from workers.runs.parts import ShardPart
from workers.storage import ObjectInfo, display_key, open_store

log = logging.getLogger(__name__)


class LabelerActor:
    """The body of each Ray actor: one Labeler, built from the job's JSON."""

    def __init__(self, job_json: str):
        """Load the models (once per actor, and again after a restart)."""
        from workers.labelling.labeler import Labeler

        self.labeler = Labeler(Job.model_validate_json(job_json))

    def ready(self) -> dict:
        """Once the models are loaded: {"worker": host:pid, "models": sha256 by role, "clip_model": name or None}."""
        return {"worker": self.labeler.worker, "models": self.labeler.models, "clip_model": self.labeler.clip_name}

    def node(self) -> str:
        """The Ray node id the actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def label_shard(self, run_id: str, shard_id: int) -> dict:
        """`Labeler.label_shard`, its summary as a dict."""
        return self.labeler.label_shard(run_id, shard_id).model_dump()

    def label_part(self, run_id: str, shard_id: int, start: int, stop: int) -> ShardPart:
        """`Labeler.label_part`: objects [start, stop) of a shard, tables returned, nothing written."""
        return self.labeler.label_part(run_id, shard_id, start, stop)


def _lost_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return (RayActorError, ActorDiedError, ActorUnavailableError)


class LabelerPool:
    """N Labeler actors on a Ray cluster (the job's, or a private local one)."""

    def __init__(self, job: Job, start_timeout_s: float = 900.0, actor: type = LabelerActor):
        """Connect to (or start) Ray and start `job.compute.num_actors` actors.

        Args:
            job: the validated job; `compute` sets the actors' resources and the cluster address.
            start_timeout_s: how long `label` waits for any actor to be ready before giving up.
            actor: the actors' class: LabelerActor, or a stand-in with its methods (the scale simulation).

        Raises:
            cluster.ClusterError: the cluster cannot be reached or started.
        """
        import ray

        self.start_timeout_s = start_timeout_s
        self.output = open_store(job.output, job.storage)
        self.source = open_store(job.source.uri, job.storage)
        self._exit = contextlib.ExitStack()
        private = self._exit.enter_context(cluster.connect(cluster.address_for(job.compute.ray_address)))
        # Every actor gets the same CPU count (and so the same torch threads: equal scores bit for bit).
        cpus = job.compute.actor_cpus(ray.cluster_resources().get("CPU", 1.0))
        job = job.model_copy(update={"compute": job.compute.model_copy(update={"cpus_per_actor": cpus})})
        self.job = job
        c = job.compute
        if private and (have := cluster.unfit(c.cpus_per_actor, c.gpus_per_actor)) is not None:
            # A private cluster never grows: an actor that fits no node would wait for ever.
            self._exit.close()
            raise PoolError(
                f"compute.gpus_per_actor is {c.gpus_per_actor:g} and compute.cpus_per_actor {c.cpus_per_actor:g}, but "
                f"the local Ray cluster has {have}; set compute.gpus_per_actor: 0 to label on the CPU, or run on a "
                "cluster with such nodes (--ray-address)"
            )
        self._unfit_warned = False
        actor_cls = ray.remote(actor).options(
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
        self._shutdown_elsewhere = False  # set by `PoolStart`, whose thread then stops Ray
        self._lock = threading.Lock()
        self.redispatched = 0  # shard attempts sent again because their actor was lost
        self.actor_info: dict = {}  # LabelerActor.ready() of the first actor that was ready
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
                    info = ray.get(actor.ready.remote(), timeout=max(deadline - time.monotonic(), 0.1))
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
                    log.info("Labeler actor ready on %s", info["worker"])
                    with self._lock:
                        self.actor_info = self.actor_info or info
                    self._idle.put(actor)
                    return
                log.error("a Labeler actor is out of the pool: %s", error)
                with self._lock:
                    self._lost += 1
                return

        threading.Thread(target=wait, daemon=True, name="fastsam-actor-ready").start()

    def _take(self):
        deadline = time.monotonic() + self.start_timeout_s
        warn_at = time.monotonic() + 30.0
        while not self._closed.is_set():
            if self._lost >= len(self._actors):
                raise PoolError("every Labeler actor failed to start or restart; see the errors logged above")
            if not self._unfit_warned and time.monotonic() > warn_at:
                self._warn_unfit()
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

    def _warn_unfit(self) -> None:
        """Say once, in one line, when no node of a joined cluster can hold an actor (an autoscaler may add one)."""
        c = self.job.compute
        have = cluster.unfit(c.cpus_per_actor, c.gpus_per_actor)
        self._unfit_warned = True
        if have is not None:
            log.warning(
                "no Labeler actor can start: each needs %g CPUs and %g GPUs (compute.cpus_per_actor, "
                "compute.gpus_per_actor) and the cluster has %s; waiting up to %.0f s for its autoscaler to add a node",
                c.cpus_per_actor, c.gpus_per_actor, have, self.start_timeout_s,
            )  # fmt: skip

    def _call(self, what: str, method: str, *args):
        """Run an actor method on the next idle actor: (result, None), or (None, error) when the actor died.

        Raises:
            ShardError: the Labeler raised.
        """
        import ray
        from ray.exceptions import RayTaskError

        actor = self._take()
        try:
            out = ray.get(getattr(actor, method).remote(*args))
        except _lost_errors() as e:
            with self._lock:
                self.redispatched += 1
            self._when_ready(actor)  # Ray restarts it; it takes work again once ready
            return None, e
        except RayTaskError as e:
            self._idle.put(actor)
            cause = e.cause if e.cause is not None else e
            raise ShardError(f"{what} failed: {type(cause).__name__}: {cause}", cause) from None
        self._idle.put(actor)
        return out, None

    def label(self, run_id: str, shard_id: int) -> ShardSummary:
        """Label one shard on the next idle actor; blocks until done.

        Raises:
            ShardError: the Labeler raised (e.g. the output store refused the write).
            PoolError: no actor could start.
        """
        tries = self.job.compute.max_shard_attempts
        what = f"shard {shard_id} of run {run_id}"
        for attempt in range(1, tries + 1):
            out, lost = self._call(what, "label_shard", run_id, shard_id)
            if lost is None:
                return ShardSummary.model_validate(out)
            log.warning("%s: actor lost (attempt %d/%d): %s", what, attempt, tries, lost)
        log.warning("%s: actors died %d times on it; splitting it to find the object that kills them", what, tries)
        return self._isolate(run_id, shard_id)

    def _isolate(self, run_id: str, shard_id: int) -> ShardSummary:
        """Find the object that kills the actors (workers.ray.isolation), label the rest."""

        def label(start: int, stop: int):
            what = f"objects {start}-{stop - 1} of shard {shard_id} of run {run_id}"
            return self._call(what, "label_part", run_id, shard_id, start, stop)

        def lost(obj: ObjectInfo) -> ShardPart:
            info = self.actor_info  # set: an actor was ready to die on this object
            uri = self.source.uri_of(obj.key)
            log.error("%s: its Labeler actor died twice on it; recorded as worker_lost", display_key(uri))
            return rows.worker_lost_part(obj, uri, run_id, shard_id, self.job, info["models"]["fastsam"][0],
                                         info["clip_model"])  # fmt: skip

        return isolate(self.output, RunLayout(run_id), shard_id, label, lost)

    def map(
        self, run_id: str, shard_ids: Iterable[int], transient_tries: int = 3, backoff_s: float = 5.0
    ) -> Iterator[tuple[int, ShardSummary | Exception]]:
        """Label shards as `shard_ids` yields them; yield (shard id, summary or the exception) as each finishes.

        The iterable is read in a thread as the pool takes work (it may block: a plan still being
        listed), so that at most a few shards more than there are actors are waiting at any time;
        completions are waited for, not polled. A shard whose error may pass (`is_transient`: the
        store was unavailable) is tried `transient_tries` times in all, `backoff_s` doubling between.

        Raises:
            whatever iterating `shard_ids` raised, once the shards already taken have finished.
        """
        results: queue.SimpleQueue = queue.SimpleQueue()
        waiting = len(self._actors) + max(2, len(self._actors) // 4)  # shards taken at once: one per thread
        window = threading.Semaphore(waiting)
        stop = threading.Event()
        fed: list = []  # [count] or [count, error] once the iterable ends

        def one(shard_id: int) -> ShardSummary:
            for attempt in range(1, transient_tries + 1):
                try:
                    return self.label(run_id, shard_id)
                except ShardError as e:
                    if attempt == transient_tries or not is_transient(e.cause) or self._closed.is_set():
                        raise
                    log.warning("shard %d of run %s: %s; trying again (%d/%d)", shard_id, run_id, e, attempt,
                                transient_tries)  # fmt: skip
                    time.sleep(backoff_s * 2 ** (attempt - 1))
            raise AssertionError("unreachable")

        def done(shard_id: int, fut: Future) -> None:
            window.release()
            err = fut.exception()
            results.put((shard_id, err if err is not None else fut.result()))

        def feed(executor: ThreadPoolExecutor) -> None:
            n = 0
            try:
                for shard_id in shard_ids:
                    window.acquire()
                    if stop.is_set():
                        break
                    executor.submit(one, shard_id).add_done_callback(lambda f, i=shard_id: done(i, f))
                    n += 1
            except BaseException as e:  # handed to the consumer
                fed.extend([n, e])
            else:
                fed.append(n)
            results.put(None)

        with ThreadPoolExecutor(waiting, thread_name_prefix="fastsam-dispatch") as executor:
            feeder = threading.Thread(target=feed, args=(executor,), daemon=True, name="fastsam-feed")
            feeder.start()
            got = 0
            try:
                while not fed or got < fed[0]:
                    item = results.get()
                    if item is None:
                        continue
                    got += 1
                    yield item
            finally:
                stop.set()
                window.release()  # a feeder waiting for room sees `stop`
        feeder.join()
        if len(fed) > 1:
            raise fed[1]

    def close(self) -> None:
        """Stop the actors (and Ray, if this pool started it)."""
        import ray

        self._closed.set()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if not self._shutdown_elsewhere:
            self._exit.close()

    def __enter__(self) -> LabelerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PoolStart:
    """A LabelerPool started in a background thread now and handed over later: an explicit handle.

    The CLI starts one while Prefect's server starts, so Ray and the actors' model loading overlap
    it, and passes it to the flow, which `take`s it (or builds its own pool without one). A pool
    nobody took is closed when the block ends; a taken one belongs to the taker. The starting thread
    lives until the block ends: Ray's local processes die with the thread that started them (Linux's
    parent-death signal is per thread). It also stops Ray (about 1.3 s) as soon as the pool is
    closed, while the flow goes on to commit; the block ends after that.
    """

    def __init__(self, job: Job, actor: type = LabelerActor):
        self.job = job
        self.actor = actor
        self._future: Future = Future()
        self._done = threading.Event()
        self._taken = False
        self._thread = threading.Thread(target=self._start, name="fastsam-pool-start", daemon=True)

    def _start(self) -> None:
        try:
            pool = LabelerPool(self.job, actor=self.actor)
        except BaseException as e:  # handed to whoever takes the pool
            self._future.set_exception(e)
            self._done.wait()
            return
        pool._shutdown_elsewhere = True
        self._future.set_result(pool)
        while not pool._closed.wait(0.05) and not self._done.is_set():
            pass
        try:
            pool._exit.close()
        except Exception as e:  # the run's outcome is decided; say so rather than end the thread with a trace
            log.warning("stopping the private Ray cluster failed: %s: %s", type(e).__name__, e)

    def take(self) -> LabelerPool:
        """The pool, once it has started (the caller closes it).

        Raises:
            PoolError, ClusterError: it could not start.
        """
        self._taken = True
        return self._future.result()

    def __enter__(self) -> PoolStart:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._taken:
            with contextlib.suppress(BaseException):  # a start error nobody asked for is nobody's concern
                self._future.result().close()
        self._done.set()
        self._thread.join()
