"""The one thread that owns the compiled pipeline, and the bounded queue in front of it.

A compiled engine is not safe for two calls at once, so exactly one thread calls the pipeline; the event loop
only validates, enqueues and awaits. A job cancelled before it starts (its client left, it timed out, a newer
realtime frame replaced it) is skipped when it reaches the front.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from turbo_runtime.errors import InputError, TurboError
from turbo_runtime.pipeline import TurboPipeline
from turbo_runtime.serve.generation import ImageRequest, ImageResult
from turbo_runtime.serve.metrics import Metrics

log = logging.getLogger("turbo_runtime.serve")


class Overloaded(Exception):
    """The queue is full; `retry_after` is a guess in seconds at when a place frees up."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    request: ImageRequest | None  # None: `task` instead
    deadline: float  # time.monotonic() after which the job is not started any more
    task: Callable[[TurboPipeline], object] | None = None  # a call on the pipeline that is not an image (self-test)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Worker:
    """Loads the pipeline, then runs queued jobs one at a time until closed."""

    def __init__(
        self,
        source: Callable[[], TurboPipeline],
        max_queue: int,
        metrics: Metrics,
        on_ready: Callable[[TurboPipeline, float], None] | None = None,
        on_failed: Callable[[Exception], None] | None = None,
    ):
        self.source = source
        self.metrics = metrics
        self.pipeline: TurboPipeline | None = None
        self.error: str | None = None  # why loading failed
        self.on_ready, self.on_failed = on_ready, on_failed
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._durations: deque[float] = deque(maxlen=20)  # recent job seconds, for Retry-After
        self.running_since: float | None = None  # time.monotonic() when the running job started; None: idle
        self.finished = 0  # jobs run to the end, failed or not: the health check's evidence of progress
        self.failed_in_a_row = 0  # image jobs that raised (bad input aside) since the last that succeeded
        self.last_failure: str | None = None
        self._outstanding = 0  # jobs queued or running
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="turbo-worker", daemon=True)
        metrics.queue_depth.set_function(self._queue.qsize)

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """No job running and none queued (counted at once, so no gap between taking a job and starting it)."""
        return self._outstanding == 0

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Let the running job finish, drop the queued ones, and stop the thread."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
                self._done()
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            pass
        if self.ready and self._thread.is_alive():  # a compile in progress is not waited for (daemon thread)
            self._thread.join(timeout)

    def submit(self, request: ImageRequest, timeout: float) -> Future:
        """Queue a checked request; raises Overloaded when the queue is full."""
        return self._put(Job(request, time.monotonic() + timeout))

    def call(self, task: Callable[[TurboPipeline], object], timeout: float) -> Future:
        """Queue `task(pipeline)` to run on this thread, the pipeline's only caller; raises Overloaded."""
        return self._put(Job(None, time.monotonic() + timeout, task))

    def _put(self, job: Job) -> Future:
        with self._count:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise Overloaded(self._retry_after()) from None
            self._outstanding += 1
        return job.future

    def _done(self) -> None:
        with self._count:
            self._outstanding -= 1

    def _retry_after(self) -> int:
        per_job = sorted(self._durations)[len(self._durations) // 2] if self._durations else 1.0
        return max(1, round(per_job * (self._queue.qsize() + 1)))

    def _main(self) -> None:
        start = time.monotonic()
        try:
            pipeline = self.source()
        except Exception as e:  # the server cannot serve; say why once, in one line where we can
            self.error = str(e) if isinstance(e, TurboError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, TurboError):
                log.exception("loading the pipeline failed")
            if self.on_failed:
                self.on_failed(e)
            return
        self.pipeline = pipeline
        self.metrics.ready.set(1)
        if self.on_ready:
            self.on_ready(pipeline, time.monotonic() - start)
        while (job := self._queue.get()) is not None:
            self._run_job(job)
            self._done()

    def _run_job(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            self.metrics.skipped.labels("cancelled").inc()
            return
        if time.monotonic() > job.deadline:
            self.metrics.skipped.labels("timeout").inc()
            job.future.set_exception(TimeoutError("the request waited in the queue past its timeout"))
            return
        started = self.running_since = time.monotonic()
        try:
            result = job.task(self.pipeline) if job.task is not None else self._run(job.request)
        except Exception as e:  # one request's failure is its own: the next one is served as usual
            result, error = None, e
        else:
            error = None
        # The bookkeeping a health check reads is done before the waiter wakes up and may ask again.
        self.running_since = None
        self.finished += 1
        if job.request is not None:
            self._durations.append(time.monotonic() - started)
            if error is None:
                self.failed_in_a_row = 0
                result.timings["queue"] = started - job.enqueued
            elif not isinstance(error, InputError):
                self.failed_in_a_row += 1
                self.last_failure = f"{type(error).__name__}: {error}"
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)

    def _run(self, request: ImageRequest) -> ImageResult:
        result = ImageResult(request, [], [], 0)
        timings = result.timings
        for seed in range(request.seed, request.seed + request.num_images):
            out = self.pipeline(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                seed=seed,
                image=request.image,
                strength=request.strength,
                scheduler=request.scheduler,
                output_type="np",
            )
            result.images.append((out.images[0] * 255).round().astype(np.uint8))  # as to_pil rounds
            result.seeds.append(seed)
            result.steps = out.steps
            for stage, seconds in out.timings.items():
                timings[stage] = timings.get(stage, 0.0) + (sum(seconds) if isinstance(seconds, list) else seconds)
        return result
