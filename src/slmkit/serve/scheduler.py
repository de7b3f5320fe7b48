"""Bounded admission and token-level interleaving of generation requests.

Engines are single-threaded objects, so one worker thread owns them all. It
keeps up to ``len(slots)`` sequences active and advances them in turn, one
text piece each per round: a new request gets its first token after one
round instead of after every earlier request has finished. Requests beyond
the active slots wait in a FIFO of at most ``max_queue``; one more is
refused (``QueueFull`` -> HTTP 429), so the backlog never grows unbounded.

A llama.cpp slot is its own ``Llama`` instance (its own KV cache); PyTorch
slots share one model, since each generation keeps its own cache.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..engines import GenStats, stream_text


class QueueFull(Exception):
    """Every slot is busy and the wait queue is full."""


class ShuttingDown(Exception):
    """The server no longer admits requests."""


@dataclass
class Job:
    """One generation request as the worker sees it.

    The worker posts ``("text", str)``, then ``("done", GenStats)`` or
    ``("error", Exception)`` onto ``out`` in the request's event loop;
    ``Scheduler.cancel`` posts ``("cancelled", None)``.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    stats: GenStats = field(default_factory=GenStats)
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float | None = None
    t_first: float | None = None
    finished: bool = False         # the consumer saw "done"
    accounted: bool = False        # metrics recorded (once per job)

    def post(self, kind: str, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, payload))
        except RuntimeError:          # the event loop is closed: nobody is listening
            self.cancelled = True


class Scheduler:
    """Owns the engines; admits, queues, interleaves and cancels jobs.

    Args:
        slots: one engine per concurrent sequence (may repeat a shareable engine).
        max_queue: jobs allowed to wait when every slot is busy.
        on_first_token: called with (job) when a job's first text arrives (metrics).
    """

    def __init__(self, slots: list, max_queue: int,
                 on_first_token: Callable[[Job], None] | None = None):
        self.free = list(slots)
        self.n_slots = len(slots)
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.active: list[tuple[Job, object, Iterator[str]]] = []   # (job, engine, stream)
        self.on_first_token = on_first_token
        self.closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="slm-generate", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ request side
    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def n_active(self) -> int:
        return len(self.active)

    def submit(self, job: Job) -> None:
        """Admit ``job`` or raise ``QueueFull`` / ``ShuttingDown`` at once (never blocks)."""
        with self._cv:
            if self.closed:
                raise ShuttingDown()
            busy = len(self.active) + len(self.waiting)
            if busy >= self.n_slots + self.max_queue:
                raise QueueFull()
            self.waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop ``job``: a waiting job leaves the queue now, an active one after its current step."""
        with self._cv:
            if job.cancelled:
                return
            job.cancelled = True
            try:
                self.waiting.remove(job)
            except ValueError:
                pass
            self._cv.notify()
        job.post("cancelled", None)        # wakes a consumer still waiting on the job

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything still running and stop the worker thread."""
        with self._cv:
            self.closed = True
            for job in list(self.waiting):
                job.cancelled = True
                job.post("error", ShuttingDown())
            self.waiting.clear()
            for job, _, _ in self.active:
                job.cancelled = True
                job.post("error", ShuttingDown())
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.closed and not self.active and not self.waiting:
                    self._cv.wait()
                if self.closed and not self.active:
                    return
                self._start_waiting()
                batch = list(self.active)
            for entry in batch:
                self._step(entry)

    def _start_waiting(self) -> None:
        """Move queued jobs into free slots (caller holds the lock)."""
        while self.waiting and self.free:
            job = self.waiting.popleft()
            engine = self.free.pop()
            job.t_start = time.perf_counter()
            stream = stream_text(engine, job.prompt_ids, max_tokens=job.max_tokens,
                                 temperature=job.temperature, top_p=job.top_p, seed=job.seed,
                                 stop=job.stop, stats=job.stats)
            self.active.append((job, engine, stream))

    def _step(self, entry) -> None:
        """Advance one sequence by one text piece; retire it when it ends, fails or is cancelled."""
        job, engine, stream = entry
        if job.cancelled:
            self._retire(entry)
            return
        try:
            piece = next(stream)
        except StopIteration:
            job.post("done", job.stats)
            self._retire(entry)
            return
        except Exception as exc:          # one bad request must not stop the worker
            job.post("error", exc)
            self._retire(entry)
            return
        if job.t_first is None:
            job.t_first = time.perf_counter()
            if self.on_first_token:
                self.on_first_token(job)
        job.post("text", piece)

    def _retire(self, entry) -> None:
        job, engine, stream = entry
        try:
            stream.close()                 # runs the engine's cleanup (llama.cpp generator)
        except Exception:
            pass
        with self._cv:
            self.active.remove(entry)
            self.free.append(engine)
