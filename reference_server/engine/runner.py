"""The engine's own thread: every forward pass runs on it; submit and cancel from any thread.

An idle engine that receives a request waits up to `batch_wait_ms` for more, so requests that
arrive together share their first prefill forward. Sinks are called on this thread (the backend
hands events to its event loop with call_soon_threadsafe).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque

import torch

from reference_server.backend import BackendOutOfMemory
from reference_server.engine.attention import attending_to_the_pool
from reference_server.engine.engine import FixedKvEngine, deliver
from reference_server.engine.sequence import EngineClosed, Sequence
from reference_server.vram import is_out_of_memory

logger = logging.getLogger(__name__)


class EngineThread:
    """Owns a `FixedKvEngine` and the thread that steps it."""

    def __init__(self, engine: FixedKvEngine, *, batch_wait_ms: float = 5.0) -> None:
        self.engine = engine
        self.batch_wait_s = max(batch_wait_ms, 0.0) / 1000.0
        self._cond = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capplan-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, sequence: Sequence) -> None:
        """Queue `sequence`; RequestTooLarge at once when it could never run."""
        self.engine.check(sequence)
        with self._cond:
            if self._stopping:
                raise EngineClosed("the generation engine is stopped")
            self._inbox.append(sequence)
            self._cond.notify_all()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence: its row and blocks are free again at the next step boundary."""
        with self._cond:
            sequence.cancelled = True
            self._cond.notify_all()

    @property
    def running(self) -> int:
        """Sequences holding a row (a finished one lets go at the next step)."""
        return len(self.engine.running)

    @property
    def waiting(self) -> int:
        return len(self._inbox) + len(self.engine.waiting)

    def _run(self) -> None:
        with torch.inference_mode(), attending_to_the_pool(self.engine.model):
            while self._take_inbox():
                try:
                    self.engine.step()
                except Exception as error:  # a failed step must not kill the engine
                    self._fail_step(error)
            self._fail(self.engine.take_all(), EngineClosed("the generation engine stopped"))
            with self._cond:
                pending, self._inbox = list(self._inbox), deque()
            self._fail(pending, EngineClosed("the generation engine stopped"))

    def _take_inbox(self) -> bool:
        """Move new sequences into the engine; False when the engine should stop."""
        engine = self.engine
        with self._cond:
            while not self._stopping and not self._inbox and not engine.has_work():
                self._cond.wait()
            if self._stopping:
                return False
            if not engine.running and self.batch_wait_s > 0:
                # Idle engine: give requests that arrive together a moment to share the prefill.
                deadline = time.monotonic() + self.batch_wait_s
                while not self._stopping and len(self._inbox) < engine.limits.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            while self._inbox:
                engine.waiting.append(self._inbox.popleft())
        return True

    def _fail_step(self, error: Exception) -> None:
        if not is_out_of_memory(error):
            logger.exception("generation step failed")
            self._fail(self._take_running(), error)
            return
        # Out of memory cannot come from the KV pool (reserved at admission): a workspace the
        # estimate missed, or another process on the device. Free it before anyone hears.
        self.engine.counters.out_of_memory += 1
        failed = self._take_running()
        error.__traceback__ = None  # its frames hold the failed forward's tensors
        gc.collect()
        torch.cuda.empty_cache()  # a no-op without an initialised CUDA context
        self._fail(failed, BackendOutOfMemory(f"out of memory in a forward pass: {error}"))

    def _take_running(self) -> list[Sequence]:
        engine = self.engine
        taken = [s for s in engine.running if not s.done]
        for sequence in taken:
            sequence.cancelled = True
        engine.release_finished()
        return taken

    @staticmethod
    def _fail(sequences: list[Sequence], error: BaseException) -> None:
        for sequence in sequences:
            sequence.done = True
            deliver(sequence, error)
