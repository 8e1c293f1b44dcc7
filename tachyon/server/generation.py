"""What both generation endpoints share: the server context (engine, names, limits), admission
checks, running several engine requests as one merged stream, and waiting for a non-streamed
result while watching for the client to go away. Leaving a stream early aborts its requests; so
does `ServerContext.abort_all` (the shutdown grace period is over), which ends each request with
`ShutdownAbort`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from tachyon.engine.async_engine import AsyncLLMEngine
from tachyon.engine.outputs import RequestOutput
from tachyon.sampling_params import SamplingParams
from tachyon.server.disconnect import until_disconnect
from tachyon.server.errors import APIError
from tachyon.server.kv_transfer import ServerKVTransfer
from tachyon.server.metrics import ServerMetrics


class ShutdownAbort(APIError):
    """The server is shutting down and its grace period ran out before this request finished: a
    503 (OpenAI clients retry it, elsewhere) before a stream starts, a finish_reason "abort" chunk after."""

    def __init__(self) -> None:
        super().__init__(
            "the server is shutting down: the request did not finish within its --shutdown-timeout and was aborted",
            503,
        )


@dataclass
class ServerContext:
    engine: AsyncLLMEngine
    model_name: str
    model_aliases: tuple[str, ...]  # other names a request may use: the model path
    chat_template: str | None
    max_waiting_requests: int | None
    metrics: ServerMetrics
    aborted: asyncio.Event = field(default_factory=asyncio.Event)  # set by abort_all: every request ends
    kv_transfer: ServerKVTransfer | None = None  # disaggregated prefill/decode roles

    def abort_all(self) -> None:
        """Ends every request in flight (and any started later) with ShutdownAbort."""
        self.aborted.set()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name and name not in self.model_aliases:
            raise APIError(f"The model `{name}` does not exist.", 404, "model")

    def check_capacity(self) -> None:
        limit = self.max_waiting_requests
        if limit is not None and self.engine.stats().num_waiting >= limit:
            raise APIError(
                f"the server is overloaded: more than {limit} requests are waiting; retry later",
                503,
                headers={"Retry-After": "1"},
            )

    def check_prompt_len(self, num_prompt_tokens: int, max_tokens: int | None, index: int = 0) -> None:
        if num_prompt_tokens == 0:
            raise APIError(f"prompt {index} is empty", 400, "prompt")
        wanted = num_prompt_tokens + (max_tokens or 1)
        if wanted > self.max_model_len:
            raise APIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{wanted} tokens ({num_prompt_tokens} in prompt {index}, {max_tokens or 1} for the completion). "
                "Please reduce the prompt or max_tokens.",
                400,
                "prompt" if num_prompt_tokens >= self.max_model_len else "max_tokens",
            )

    async def fetch_prompt_kv(self, kv_params: dict | None, prompts: list[list[int]]) -> None:
        """Decode role: import the prompts' KV from the prefill instance named in `kv_params` (if any)."""
        if self.kv_transfer is not None:
            await self.kv_transfer.fetch_prompt_kv(kv_params, prompts)

    def start(
        self, prompts: list[list[int]], params: SamplingParams, prefix: str, priority: int, kv_params: dict | None
    ):
        """One engine request per prompt, each wrapped for metrics; returns (request id, streams, the
        response's kv_transfer_params: where a decode instance fetches the prompts' KV, or None)."""
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        export = self.kv_transfer is not None and self.kv_transfer.exports(kv_params)
        now = time.monotonic()
        streams = [
            self.metrics.track(
                self.engine.generate(p, params, f"{request_id}-{i}", priority, request_id if export else None), now
            )
            for i, p in enumerate(prompts)
        ]
        return request_id, streams, (self.kv_transfer.response_params(request_id) if export else None)


async def merge_streams(
    streams: list[AsyncIterator[RequestOutput]], aborted: asyncio.Event
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they arrive; leaving early cancels (aborts) them all.
    Raises ShutdownAbort (after aborting them all) once `aborted` is set."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
            queue.put_nowait((i, None))
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait((i, e))

    async def watch_abort() -> None:
        await aborted.wait()
        queue.put_nowait((-1, ShutdownAbort))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    watcher = asyncio.create_task(watch_abort())
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif item is ShutdownAbort:
                raise ShutdownAbort()
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in (*tasks, watcher):
            task.cancel()
        await asyncio.gather(*tasks, watcher, return_exceptions=True)


async def final_outputs(
    streams: list[AsyncIterator[RequestOutput]], raw_request: Request, aborted: asyncio.Event
) -> list[RequestOutput]:
    """The last output of each stream; aborts everything if the client disconnects meanwhile, or
    raises ShutdownAbort (a 503) if `aborted` is set first."""

    async def consume() -> list[RequestOutput]:
        finals: list[RequestOutput] = [None] * len(streams)  # type: ignore[list-item]
        async for i, out in merge_streams(streams, aborted):
            finals[i] = out
        return finals

    return await until_disconnect(consume(), raw_request)


async def first_then_rest(events: AsyncIterator, raw_request: Request) -> AsyncIterator:
    """Waits for the first event before a stream's response starts, so a request the engine refuses
    still gets a 400 rather than an error inside a 200 stream."""
    try:
        first = await until_disconnect(events.__anext__(), raw_request)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise

    async def rest():
        try:
            if first is not None:
                yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    return rest()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(e: Exception) -> str:
    status = 400 if isinstance(e, ValueError) else 500
    return sse({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": status}})


def with_kv_params(body: dict, kv_params: dict | None) -> dict:
    """A prefill instance's response tells the router where the prompt's KV waits (vLLM's field name)."""
    return body if kv_params is None else {**body, "kv_transfer_params": kv_params}
