"""Asyncio front end for the server: `generate()` is an async iterator of incremental outputs and
`abort()` stops a request. The engine steps in a background thread, so HTTP handling never waits
for a model step and a slow reader never stalls the other streams.

    event loop ── prepare (tokenize, validate; worker thread) ── command queue ──┐
    engine thread: drain commands (submit / abort) → step() → outputs ───────────┘
                   └─ call_soon_threadsafe → one asyncio.Queue per request

Only the engine thread mutates the engine, and commands wait at most one step (no lock that a
busy stepping loop could starve).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

from tachyon.config import EngineConfig
from tachyon.engine.llm_engine import EngineStats, LLMEngine
from tachyon.engine.outputs import RequestOutput
from tachyon.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop crashed; every request fails with this and new ones are refused."""


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="tachyon-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        kv_transfer_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields an output after every step that touched the request; raises ValueError for bad input.
        Leaving the iteration early (client gone, task cancelled) aborts the request."""
        if self._error is not None:
            raise EngineDeadError(f"engine loop failed: {self._error!r}")
        state = await asyncio.to_thread(
            self.engine.prepare_request, prompt, params, request_id, priority, kv_transfer_id
        )
        outputs: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = (asyncio.get_running_loop(), outputs)
        self._send("submit", state)
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, ValueError):  # refused at submission (e.g. a duplicate id)
                    raise item
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"engine loop failed: {item!r}") from item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort before the next step; frees the request's blocks."""
        self._send("abort", request_id)

    def import_kv(self, blocks: dict) -> None:
        """Put fetched KV blocks (hash -> bytes) into the pool before the next step, so a request submitted
        after this call finds them in the prefix cache."""
        self._send("import", blocks)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.engine.shutdown()

    def _send(self, verb: str, arg) -> None:
        self._commands.put((verb, arg))
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.clear()
            try:
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self.engine.parking.collect()  # parked KV expires even while nothing runs
                    self._wake.wait(timeout=1.0 if self.engine.parking else None)
                    continue
                outputs = self.engine.step()
            except BaseException as e:  # a crash must reach every waiting client, not hang them
                logger.exception("engine loop failed")
                self._fail_all(e)
                return
            for out in outputs:
                self._deliver(out.request_id, out)

    def _apply_commands(self) -> None:
        while True:
            try:
                verb, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if verb == "abort":
                self.engine.abort(arg)
            elif verb == "import":
                self.engine.import_kv(arg)
            elif arg.request_id in self._queues:  # not already abandoned by its caller
                try:
                    self.engine.submit(arg)
                except ValueError as e:
                    self._deliver(arg.request_id, e)

    def _deliver(self, request_id: str, item) -> None:
        target = self._queues.get(request_id)
        if target is not None:
            loop, outputs = target
            loop.call_soon_threadsafe(outputs.put_nowait, item)

    def _fail_all(self, error: BaseException) -> None:
        self._error = error
        for request_id in list(self._queues):
            self._deliver(request_id, error)
