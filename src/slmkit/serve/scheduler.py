"""Bounded admission and continuous batching of generation requests.

One worker thread owns the batched engine (see ``engines.batching``). Each
step it retires finished and cancelled sequences, moves waiting requests into
free slots (reusing any cached prompt prefix), and makes one ``decode`` call
that advances every generating sequence by one token and reads the next
chunk of the prompts still being read. A long prompt is read ``step_tokens``
at a time alongside the others' decoding, so it never stalls them. Requests
beyond the slots wait in a FIFO of at most ``max_queue``; one more is refused
(``QueueFull`` -> HTTP 429), so the backlog never grows unbounded.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..engines import GenStats
from ..engines.base import TextStream
from ..engines.batching import Feed


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


@dataclass(eq=False)
class _Seq:
    """A job while it holds a slot."""

    job: Job
    slot: int
    pending: list[int]             # prompt tokens not yet in the slot's cache
    text: TextStream
    next_tok: int | None = None    # sampled, to be fed in the next step
    t_token: float = 0.0           # when the first token was sampled


class Scheduler:
    """Owns the batched engine; admits, queues, batches and cancels jobs.

    Args:
        batch: a batched engine (``LlamaCppBatch`` or ``HFBatch``).
        max_queue: jobs allowed to wait when every slot is busy.
        on_first_token: called with (job) when a job's first text arrives (metrics).
        step_tokens: most tokens one step decodes (one per generating sequence,
            the rest prompt chunks).
    """

    def __init__(self, batch, max_queue: int,
                 on_first_token: Callable[[Job], None] | None = None, step_tokens: int = 256):
        self.batch = batch
        self.engine = batch.engine
        self.n_slots = batch.n_slots
        self.step_tokens = max(step_tokens, self.n_slots)
        self.free = list(range(self.n_slots))
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.active: list[_Seq] = []
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
        """Stop ``job``: a waiting job leaves the queue now, an active one after the current step."""
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
            for seq in self.active:
                seq.job.cancelled = True
                seq.job.post("error", ShuttingDown())
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.closed and not self.active and not self.waiting:
                    self._cv.wait()
                for seq in [s for s in self.active if s.job.cancelled]:
                    self._retire(seq)
                if self.closed and not self.active:
                    return
                self._start_waiting()
                seqs = list(self.active)
            if seqs:
                self._step(seqs)

    def _start_waiting(self) -> None:
        """Move queued jobs into free slots (caller holds the lock)."""
        while self.waiting and self.free:
            job = self.waiting.popleft()
            ids = list(job.prompt_ids) or self.engine.tokenize(" ")
            job.stats.prompt_tokens = len(ids)
            slot, n_cached = self.batch.start(self.free, ids)
            self.free.remove(slot)
            self.batch.set_sampler(slot, job.temperature, job.top_p, job.seed)
            job.t_start = time.perf_counter()
            self.active.append(_Seq(job, slot, ids[n_cached:],
                                    TextStream(self.engine.detokenize, job.stop)))

    def _plan(self, seqs: list[_Seq]) -> list[tuple[_Seq, Feed]]:
        """This step's feeds: every generating sequence's last token, then prompt chunks."""
        plan = [(s, Feed(s.slot, [s.next_tok], True)) for s in seqs if s.next_tok is not None]
        room = self.step_tokens - len(plan)
        for s in seqs:
            if s.next_tok is None and s.pending and room > 0:
                chunk = s.pending[:room]
                plan.append((s, Feed(s.slot, chunk, len(chunk) == len(s.pending))))
                room -= len(chunk)
        return plan

    def _step(self, seqs: list[_Seq]) -> None:
        plan = self._plan(seqs)
        try:
            sampled = self.batch.decode([f for _, f in plan])
        except Exception as exc:           # a failed step fails the requests in it, not the server
            for seq, _ in plan:
                seq.job.post("error", exc)
                with self._cv:
                    self._retire(seq)
            return
        now = time.perf_counter()
        for seq, feed in plan:
            if seq.next_tok is None:
                del seq.pending[:len(feed.tokens)]
            seq.next_tok = None
            if feed.slot in sampled and not seq.job.cancelled:
                if self._accept(seq, sampled[feed.slot], now):
                    with self._cv:
                        self._retire(seq)

    def _accept(self, seq: _Seq, tok: int, now: float) -> bool:
        """Record and relay one sampled token; True when the sequence is over."""
        job, stats = seq.job, seq.job.stats
        if stats.completion_tokens == 0:
            stats.ttft_s, seq.t_token = now - job.t_start, now
        stats.completion_tokens += 1
        stats.token_ids.append(tok)
        stats.decode_s = now - seq.t_token
        if tok in self.engine.eos_ids:
            stats.finish_reason = "stop"
            return self._finish(seq, seq.text.flush())
        piece = seq.text.push(tok)
        if seq.text.stopped:
            stats.finish_reason = "stop"
            return self._finish(seq, piece)
        if stats.completion_tokens >= job.max_tokens:
            stats.finish_reason = "length"
            return self._finish(seq, piece + seq.text.flush())
        self._send(job, piece)
        seq.next_tok = tok
        return False

    def _finish(self, seq: _Seq, piece: str) -> bool:
        self._send(seq.job, piece)
        seq.job.post("done", seq.job.stats)
        return True

    def _send(self, job: Job, piece: str) -> None:
        if not piece:
            return
        if job.t_first is None:
            job.t_first = time.perf_counter()
            if self.on_first_token:
                self.on_first_token(job)
        job.post("text", piece)

    def _retire(self, seq: _Seq) -> None:
        """Free the sequence's slot (caller holds the lock); its cache stays for reuse."""
        if seq in self.active:
            self.active.remove(seq)
            self.batch.release(seq.slot)
            self.free.append(seq.slot)
