"""The inference worker: claims jobs from the Redis stream, runs them on the engine, streams events back.

Run it with `python -m models.worker` (or in-process, when `EMBEDDED_WORKER` is on).  What it promises:

* up to `WORKER_CONCURRENCY` jobs at once, so a batching engine really batches;
* only jobs for the chat models it serves (`WORKER_MODELS`): each model has its own job stream and
  consumer group (models/routing.py), and the guarantees below hold per stream;
* a job is XACKed only after its final event is written; while it runs, the worker refreshes the job's
  idle time, so a job whose worker died (no refresh for `JOB_VISIBILITY_TIMEOUT`) is taken over by
  another worker (XAUTOCLAIM) and its reply restarts with the next attempt number;
* after `JOB_MAX_ATTEMPTS` the job is dead-lettered and the user gets an error event;
* a heartbeat lets the bot tell "queued behind others" from "no worker alive";
* SIGTERM: stop claiming, let running jobs finish for `WORKER_SHUTDOWN_GRACE` seconds, hand back the
  rest for another worker, and exit;
* a malformed job gets an error event (when it names a reply stream) and the worker keeps going;
* Redis going away (a restart) never ends the worker: every loop backs off and retries.

Failure policy (what is retried and what is not):
* a user-safe failure (`JobError`, `EngineError`, e.g. the test engine's `[[fail]]`, a malformed message
  list) is the job's answer: it becomes an `error` event at once and is not retried, since running it
  again would fail the same way;
* a bug inside a runner (any other exception) is reported as a generic error, also not retried;
* only a worker that *disappears* mid-job (killed, OOM, host lost) leads to a retry: the job is taken over
  with the next attempt number.  A job that kills its worker every time is dead-lettered once its
  attempts exceed `JOB_MAX_ATTEMPTS`; hand-backs on SIGTERM do not count as attempts.

Why one module of about 450 lines: claiming, heartbeats, takeover, hand-back and the final XACK are one
state machine over the same in-flight tables, and each guarantee above depends on the others' ordering;
what runs a job lives elsewhere (models/jobs/, models/context.py, the engines).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from . import routing
from .context import BadPayload, JobContext, JobError
from .engines import build_engines
from .engines.base import Engine, EngineError
from .jobs import Runner, runners
from .logs import bind as bind_log_context
from .logs import setup_logging
from .memory import freeze_startup_objects
from .metrics import MeteredContext, WorkerMetrics, start_worker_metrics
from .protocol import Bus, Claimed, ProtocolError, WorkerInfo
from .protocol import reraise_if_cancelling as _reraise_if_cancelling
from .redis_server import connect, resolve_redis_url, wait_ready
from .settings import Settings, get_settings

log = logging.getLogger("worker")

CANCEL_POLL_S = 0.5  # how long one pub/sub read waits before the cancel loop looks at `stopping` again

GENERIC_ERROR = "Sorry — something went wrong while generating this answer. Please try again."
DEAD_LETTER = "This request failed repeatedly, so I gave up on it. Please try again later."
CANCEL_GRACE = 0.5  # seconds a runner gets to stop by itself after a cancel before it is interrupted
RETRY_DELAY = 0.5  # seconds between retries while Redis is unreachable


class Worker:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        engine: Engine,
        worker_id: str | None = None,
        *,
        engines: dict[str, Engine] | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.engine = engine
        # The chat models it serves (models/routing.py): route → engine; it claims from their job streams only.
        # "" is the one job stream of a single-model deployment (and every worker built with one engine).
        self.engines: dict[str, Engine] = dict(engines) if engines else {"": engine}
        self.models = list(self.engines)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.runners: dict[str, Runner] = runners()
        self.in_flight: dict[str, asyncio.Task[None]] = {}  # stream entry id → task
        self.in_flight_jobs: dict[str, str] = {}  # stream entry id → job id
        self.answered: set[str] = set()  # entry ids whose final event (with the XACK) is being written
        self.cancels: dict[str, asyncio.Event] = {}  # job id → cancel event
        self.lost: set[str] = set()  # entry ids another worker took over: stop without writing
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self.jobs_done = 0
        self._slot_free = asyncio.Event()
        self.metrics = WorkerMetrics(self.worker_id)  # Prometheus; served when WORKER_METRICS_PORT is set
        self.metrics.watch(
            bus=bus,
            concurrency=settings.worker_concurrency,
            in_flight=lambda: len(self.in_flight),
            stopping=self.stopping.is_set,
        )

    @property
    def visibility_ms(self) -> int:
        return int(self.settings.job_visibility_timeout * 1000)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Serve until `stop()` is called; then shut down cleanly."""
        await self._retrying(lambda: self.bus.ensure_group(self.models), "create the consumer group")
        for engine in self._distinct_engines():
            await engine.start()
        self.metrics.engine_loaded = True
        metrics_server = await start_worker_metrics(
            self.metrics, self.settings.metrics_host, self.settings.worker_metrics_port
        )
        with contextlib.suppress(Exception):  # visible before it claims anything (no false "no worker")
            await self._register(self._heartbeat_interval)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
            asyncio.create_task(self._cancel_loop(), name="worker-cancels"),
        ]
        log.info(
            "worker %s serving with engine %s, concurrency %d",
            self.worker_id,
            self._describe(),
            self.settings.worker_concurrency,
        )
        claims = asyncio.create_task(self._claim_loop(), name="worker-claims")
        try:
            await self._until_stopped(claims)
        finally:
            if not claims.done():
                claims.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await claims
            await self._drain()
            await self._stop_background(background)
            with contextlib.suppress(Exception):  # bounded: with Redis down, retries would hold the exit
                async with asyncio.timeout(2.0):
                    await self.bus.unregister_worker(self.worker_id)
            for engine in self._distinct_engines():
                await engine.close()
            self.metrics.engine_loaded = False
            if metrics_server is not None:
                await metrics_server.stop()
            self.stopped.set()
            log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_done)

    def stop(self) -> None:
        self.stopping.set()
        self._slot_free.set()

    def _distinct_engines(self) -> list[Engine]:
        return list({id(engine): engine for engine in self.engines.values()}.values())

    def _describe(self) -> str:
        if list(self.engines) == [""]:
            return self.engine.describe()
        return ", ".join(f"{model}: {engine.describe()}" for model, engine in self.engines.items())

    async def _until_stopped(self, claims: asyncio.Task[None]) -> None:
        """Wait for the claim loop to end after `stop()`.  It ends by itself within one blocking read when Redis
        answers; when Redis is down it sits in the client's reconnect retries, which would hold SIGTERM for a
        minute or more, so after a second it is cancelled (an entry claimed in that instant stays pending and
        another worker takes it over after the visibility timeout)."""
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({claims, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if claims.done():
            claims.result()  # a crash of the loop itself is not swallowed
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(claims), 1.0)

    async def _retrying(self, call: Callable[[], Awaitable[object]], what: str) -> None:
        """Run `call()` until it succeeds (Redis may be restarting) or the worker is told to stop."""
        while True:
            try:
                await call()
                return
            except Exception as exc:
                _reraise_if_cancelling()
                if self.stopping.is_set():
                    raise
                log.warning("could not %s (%s); retrying", what, type(exc).__name__)
                await asyncio.sleep(RETRY_DELAY)

    async def _claim_loop(self) -> None:
        concurrency = max(1, self.settings.worker_concurrency)
        last_stale_check = 0.0
        stale_every = min(1.0, self.settings.job_visibility_timeout / 4)
        while not self.stopping.is_set():
            free = concurrency - len(self.in_flight)
            if free <= 0:
                self._slot_free.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._slot_free.wait(), timeout=stale_every)
                continue
            try:
                claimed: list[Claimed] = []
                if time.monotonic() - last_stale_check >= stale_every:
                    last_stale_check = time.monotonic()
                    claimed = await self.bus.claim_stale(self.worker_id, self.visibility_ms, free, self.models)
                if not claimed:
                    claimed = await self.bus.claim_new(self.worker_id, free, block_ms=250, models=self.models)
            except Exception as exc:  # Redis restarting (ConnectionError), group lost (NOGROUP): retry
                _reraise_if_cancelling()
                if self.stopping.is_set():
                    break
                log.warning("claim failed (%s: %s); retrying", type(exc).__name__, str(exc)[:200])
                self.metrics.redis_error()
                if "NOGROUP" in str(exc):  # Redis came back without our data: recreate the group
                    with contextlib.suppress(Exception):
                        await self.bus.ensure_group(self.models)
                await asyncio.sleep(RETRY_DELAY)
                continue
            for item in claimed:
                try:
                    await self._accept(item)
                except Exception as exc:  # the entry stays pending; a stale check takes it up again later
                    _reraise_if_cancelling()
                    log.warning("could not start job %s (%s)", item.entry_id, type(exc).__name__)

    async def _accept(self, item: Claimed) -> None:
        if item.job is None:
            await self._reject(item, item.error or ProtocolError("malformed job"))
            return
        job = item.job
        if item.entry_id in self.in_flight:  # our own job came back to us (we stalled): keep running it
            return
        # The bookkeeping round trips run in the job's own task, so a batch of claimed jobs starts at once.
        task = asyncio.create_task(self._start(item), name=f"job-{job.id}")
        self.in_flight[item.entry_id] = task
        self.in_flight_jobs[item.entry_id] = job.id
        task.add_done_callback(lambda _t, entry=item.entry_id: self._finished(entry))

    async def _start(self, item: Claimed) -> None:
        """Count the attempt; skip a job already complete, dead-letter one that failed too often, else run."""
        assert item.job is not None
        job = item.job
        try:
            attempt, cancelled, announced = await self._bookkeeping(item)
        except Exception as exc:  # Redis unreachable: the entry stays pending and is taken over later
            _reraise_if_cancelling()
            log.warning("could not start job %s (%s)", job.id, type(exc).__name__)
            return
        if attempt:
            self.metrics.accepted(job, attempt)
            await self._run_job(item, attempt, cancelled=cancelled, announced=announced)

    async def _bookkeeping(self, item: Claimed) -> tuple[int, bool, bool]:
        """(attempt to run or 0 when there is nothing to run, cancelled before it started, `status` written).

        A first attempt is counted, checked for a cancel and announced in one round trip."""
        assert item.job is not None
        job = item.job
        attempt, cancelled, announced = await self.bus.start_attempt(
            job.id, {"state": "started", "worker": self.worker_id}
        )
        if attempt > 1:
            if await self.bus.final_event(job.id) is not None:
                # The previous attempt wrote its final event but died before the XACK: nothing to redo.
                await self.bus.ack(item.entry_id)
                return 0, False, False
            failures = attempt - 1 - await self.bus.handbacks(job.id)
            if failures >= self.settings.job_max_attempts:
                log.error("job %s failed %d times; dead-lettering", job.id, failures)
                # Dead-letter first, then tell: whoever sees the error finds the dead-letter entry.
                await self.bus.dead_letter(item, f"too many attempts ({failures})")
                await self.bus.emit(job.id, attempt, "error", {"message": DEAD_LETTER, "code": "dead_letter"})
                self.metrics.dead_lettered("too_many_attempts")
                await self.bus.ack(item.entry_id)
                return 0, False, False
        return attempt, cancelled, announced

    def _finished(self, entry_id: str) -> None:
        self.in_flight.pop(entry_id, None)
        self.in_flight_jobs.pop(entry_id, None)
        self.answered.discard(entry_id)
        self.lost.discard(entry_id)
        self._slot_free.set()

    async def _reject(self, item: Claimed, error: ProtocolError) -> None:
        """A job that cannot be parsed: tell its reader if it has one, dead-letter it, keep serving."""
        job_id = item.raw.get("id", "")
        log.warning("rejecting malformed job %s: %s", item.entry_id, error)
        await self.bus.dead_letter(item, str(error))
        if job_id and len(job_id) <= 64 and job_id.replace("-", "").isalnum():
            await self.bus.emit(job_id, 1, "error", {"message": f"Invalid request: {error}", "code": "bad_job"})
        self.metrics.dead_lettered("bad_job")
        await self.bus.ack(item.entry_id)

    async def _run_job(self, item: Claimed, attempt: int, *, cancelled: bool = False, announced: bool = False) -> None:
        assert item.job is not None
        job = item.job
        cancel = asyncio.Event()
        if cancelled:
            cancel.set()
        self.cancels[job.id] = cancel
        bind_log_context(job=job.id, attempt=attempt, kind=job.kind)  # this task's log lines carry the job id
        # A job only reaches a worker from the stream of a model it serves (`Bus._claimed` checks the job agrees).
        # A single-model job (no model named) runs on `self.engine`, which callers may swap after construction.
        engine = self.engines.get(job.model, self.engine) if job.model else self.engine
        ctx = MeteredContext(
            job=job,
            attempt=attempt,
            engine=engine,
            bus=self.bus,
            settings=self.settings,
            cancel=cancel,
            worker_id=self.worker_id,
            metrics=self.metrics,
            ack_entry=item.entry_id,
            delta_window=max(0.0, self.settings.delta_window_ms / 1000),
        )
        ctx.on_final = lambda: self.answered.add(item.entry_id)
        try:
            try:
                if not announced:  # a retried attempt (a first one is announced by `start_attempt`)
                    await ctx.status(state="started", worker=self.worker_id)
                runner = self.runners.get(job.kind)
                if runner is None:
                    raise JobError(f"this worker cannot run {job.kind!r} jobs")
                if cancel.is_set():
                    await ctx.done("", stopped=True)
                else:
                    await self._run_runner(runner, ctx)
                if not ctx.finished:
                    await ctx.error(GENERIC_ERROR, "no_result")
            except asyncio.CancelledError:
                raise  # shutdown hands the job back, or another worker took it over; no ack
            except (BadPayload, ProtocolError) as exc:
                await self.bus.dead_letter(item, str(exc))
                await ctx.error(f"Invalid request: {exc}", "bad_job")
            except (JobError, EngineError) as exc:
                await ctx.error(str(exc), type(exc).__name__)
            except TimeoutError:
                await ctx.error("That took too long, so I stopped. Try a shorter request.", "timeout")
            except Exception:
                _reraise_if_cancelling()  # a hand-back or takeover, not a crash
                log.exception("job %s (%s) crashed", job.id, job.kind)
                await ctx.error(GENERIC_ERROR, "internal")
        finally:
            self.cancels.pop(job.id, None)
            ctx.close()  # an abandoned attempt writes no more deltas
        if ctx.acked:  # the usual case: the XACK went with the final event
            self.jobs_done += 1
            return
        for delay in (0.1, 0.5, 1.0, 2.0, 0.0):  # the final event is written; make the XACK stick
            try:
                await self.bus.ack(item.entry_id)
                break
            except Exception:
                _reraise_if_cancelling()
                if not delay:
                    raise  # left pending: whoever takes it over sees the final event and only acks
                await asyncio.sleep(delay)
        self.jobs_done += 1

    async def _run_runner(self, runner: Runner, ctx: JobContext) -> None:
        """Run one attempt under the job deadline; after a cancel, give the runner `CANCEL_GRACE` to stop
        by itself (it then reports its partial answer), else interrupt it and report what was streamed."""
        task = asyncio.create_task(runner(ctx))
        cancelled = asyncio.create_task(ctx.cancel.wait())
        try:
            done, _ = await asyncio.wait(
                {task, cancelled}, timeout=self.settings.job_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if task not in done and cancelled in done:
                done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await ctx.done(ctx.text, stopped=True)
                    return
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise TimeoutError
            task.result()
        finally:
            cancelled.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _drain(self) -> None:
        """Let running jobs finish for the grace period, then hand the rest back."""
        if not self.in_flight:
            return
        log.info("waiting up to %.0fs for %d running jobs", self.settings.worker_shutdown_grace, len(self.in_flight))
        _done, pending = await asyncio.wait(list(self.in_flight.values()), timeout=self.settings.worker_shutdown_grace)
        if pending:
            entries = [entry for entry, task in self.in_flight.items() if task in pending]
            jobs = [self.in_flight_jobs[entry] for entry in entries if entry in self.in_flight_jobs]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            try:
                await self.bus.release(self.worker_id, entries, idle_ms=self.visibility_ms + 1, job_ids=jobs)
                log.info("handed back %d unfinished jobs", len(entries))
            except Exception as exc:  # still pending under our name: taken over after the visibility timeout
                log.warning("could not hand back %d jobs (%s)", len(entries), type(exc).__name__)

    # ------------------------------------------------------------------ background loops
    async def _heartbeat_loop(self) -> None:
        """Register the worker, keep its jobs from being taken over, notice jobs it lost, and poll the
        cancel keys of running jobs (a cancel published while the pub/sub link was down is not lost)."""
        interval = self._heartbeat_interval
        while True:
            try:
                await self._register(interval)
                # A job whose final event is being written (with its XACK) needs no more heartbeats, and its
                # entry must not look "taken over" once the XACK removed it from the pending list.
                running = [entry for entry in self.in_flight if entry not in self.answered]
                lost = await self.bus.heartbeat_jobs(self.worker_id, running)
                for entry in lost:
                    task = self.in_flight.get(entry)
                    if task is not None and not task.done() and entry not in self.lost and entry not in self.answered:
                        # Another worker runs it now (we stalled past the visibility timeout); its attempt
                        # owns the reply, so stop ours without writing or acking anything.
                        log.warning("job entry %s was taken over by another worker; stopping ours", entry)
                        self.lost.add(entry)
                        task.cancel()
                waiting = [job_id for job_id, event in self.cancels.items() if not event.is_set()]
                for job_id in await self.bus.cancelled_among(waiting):
                    if job_id in self.cancels:
                        self.cancels[job_id].set()
            except Exception as exc:
                _reraise_if_cancelling()
                log.warning("heartbeat failed: %s", type(exc).__name__)
            await asyncio.sleep(interval)

    @property
    def _heartbeat_interval(self) -> float:
        return max(0.2, min(5.0, self.settings.job_visibility_timeout / 4))

    async def _register(self, interval: float) -> None:
        await self.bus.register_worker(
            WorkerInfo(
                worker_id=self.worker_id,
                host=socket.gethostname(),
                engine=self._describe(),
                concurrency=self.settings.worker_concurrency,
                in_flight=len(self.in_flight),
                vision=any(engine.supports_vision for engine in self.engines.values()),
                last_seen=time.time(),
                models=[model for model in self.models if model],
            ),
            ttl=max(15.0, interval * 3),
        )

    async def _stop_background(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel the background loops and wait for them, bounded: a cancellation can be absorbed inside
        redis-py's read/reconnect path (CI once saw a shutdown wait 30 s on the pub/sub read), so the loops also
        end by themselves once `stopping` is set, and shutdown never waits on them for more than a few seconds."""
        for task in tasks:
            task.cancel()
        _done, pending = await asyncio.wait(tasks, timeout=3.0)
        if pending:
            log.warning("background loops did not stop in time: %s", ", ".join(t.get_name() for t in pending))

    async def _cancel_loop(self) -> None:
        """Relay published cancellations to the running jobs' events.  It polls with a short timeout instead of
        `listen()` so that it notices `stopping` by itself (see `_stop_background`)."""
        while not self.stopping.is_set():
            pubsub = None
            try:
                pubsub = await self.bus.cancel_listener()
                while not self.stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=CANCEL_POLL_S)
                    event = self.cancels.get(message.get("data")) if message else None
                    if event is not None:
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _reraise_if_cancelling()
                log.warning("cancel listener lost (%s); resubscribing", type(exc).__name__)
                await asyncio.sleep(RETRY_DELAY)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2.0):
                            await pubsub.aclose()


def build_worker(settings: Settings, bus: Bus) -> Worker:
    """A worker with one engine per chat model it serves (`CHAT_MODELS` / `WORKER_MODELS`)."""
    engines = build_engines(settings)
    return Worker(settings, bus, next(iter(engines.values())), engines=engines)


def make_bus(settings: Settings, url: str | None = None) -> Bus:
    client = connect(url or resolve_redis_url(settings.redis_url, settings.data_dir))
    return Bus(
        client,
        reply_ttl=settings.reply_ttl,
        blob_ttl=settings.blob_ttl,
        max_job_bytes=settings.max_job_bytes,
        models=routing.names(settings) if routing.routed(settings) else (),
    )


async def serve(settings: Settings) -> None:
    """Run one worker process until SIGTERM/SIGINT."""
    bus = make_bus(settings)
    await wait_ready(bus.redis, timeout=30)
    worker = build_worker(settings, bus)
    freeze_startup_objects()  # what the process loaded lives as long as it: keep full GCs off it (models/memory.py)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await bus.close()
        await bus.redis.aclose()


def main() -> None:
    settings = get_settings()
    setup_logging(settings)  # LOG_FORMAT text|json, job ids, secrets redacted
    try:
        routing.worker_models(settings)  # a WORKER_MODELS typo ends the start with one line, not a traceback
    except routing.ModelListError as exc:
        raise SystemExit(f"Invalid settings (from the environment or .env):\n  WORKER_MODELS: {exc}") from None
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
