"""Async streaming client for any OpenAI-compatible server: sends one request (/v1/completions or
/v1/chat/completions, `stream_options.include_usage`) and fills its `RequestRecord` as chunks
arrive. Every failure becomes an error on the record, never an exception; the scheduler calls
`send`, the runner calls `probe` once to check the server and find the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tachyon.bench.data import RequestSpec, TokenCounter
from tachyon.bench.metrics import OK, RequestRecord

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class ClientConfig:
    base_url: str  # http://host:port, without /v1
    endpoint: str = "completions"  # completions | chat
    model: str | None = None
    api_key: str | None = None
    ignore_eos: bool = False
    temperature: float | None = None
    extra_body: dict = field(default_factory=dict)
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {self.base_url!r}")


def normalize_url(url: str) -> str:
    """http://host:8000/v1/ -> http://host:8000"""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class StreamingClient:
    def __init__(self, config: ClientConfig, output_counter: TokenCounter | None = None) -> None:
        self.config = config
        self.model = config.model
        self.output_counter = output_counter  # counts output text when the server sends no usage
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)  # the scheduler bounds concurrency
        timeout = httpx.Timeout(config.timeout, connect=min(config.timeout, 30.0))
        self.http = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout)
        self.url = config.base_url + ENDPOINTS[config.endpoint]
        self.chat = config.endpoint == "chat"

    async def probe(self) -> str:
        """Checks that the server answers GET /v1/models; returns the model to use."""
        url = f"{self.config.base_url}/v1/models"
        try:
            r = await self.http.get(url, timeout=10.0)
        except httpx.HTTPError as e:
            raise ValueError(
                f"cannot reach the server at {self.config.base_url} ({_describe(e)}); is it running?"
            ) from None
        if r.status_code != 200:
            raise ValueError(f"GET {url} answered HTTP {r.status_code}: {_error_message(r.text)}")
        models = [m.get("id") for m in r.json().get("data", [])]
        if self.model is None:
            if not models:
                raise ValueError(f"GET {url} lists no model; pass --model")
            self.model = models[0]
        return self.model

    def body(self, spec: RequestSpec) -> dict:
        c = self.config
        body: dict = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if self.chat:
            body["messages"] = [{"role": "user", "content": spec.prompt}]
        else:
            body["prompt"] = spec.prompt
        if spec.output_tokens is not None:
            body["max_completion_tokens" if self.chat else "max_tokens"] = spec.output_tokens
        if c.ignore_eos:
            body["ignore_eos"] = True  # vLLM's extension field
        if c.temperature is not None:
            body["temperature"] = c.temperature
        return {**body, **c.extra_body}

    async def send(self, spec: RequestSpec, record: RequestRecord, clock: Callable[[], float]) -> None:
        body = self.body(spec)
        record.send_time = clock()
        try:
            async with self.http.stream("POST", self.url, json=body, headers={"X-Request-Id": record.request_id}) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode("utf-8", "replace")
                    record.fail(clock(), f"HTTP {r.status_code}: {_error_message(text)}")
                    return
                text = await self._read_stream(r, record, clock)
        except httpx.HTTPError as e:
            record.fail(clock(), _describe(e))
            return
        if record.status != OK:
            return
        await self._count_output(record, text)

    async def _read_stream(self, response: httpx.Response, record: RequestRecord, clock: Callable[[], float]) -> str:
        """Consumes the SSE stream; returns the generated text. Sets status ok, or error on a bad event."""
        pieces: list[str] = []
        last_token_time = None
        num_chunks = 0
        async for line in response.aiter_lines():
            now = clock()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                record.fail(now, f"malformed stream event: {payload[:200]!r}")
                return ""
            if "error" in chunk:
                record.fail(now, f"error event: {_error_message(json.dumps(chunk))}")
                return ""
            if chunk.get("usage"):
                record.prompt_tokens = chunk["usage"].get("prompt_tokens")
                record.output_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                record.response_id = record.response_id or chunk.get("id")
                text, is_token = _choice_text(choice, self.chat)
                pieces.append(text)
                if not is_token:
                    continue
                num_chunks += 1
                if last_token_time is None:
                    record.first_token_time = now
                else:
                    record.itl.append(now - last_token_time)
                last_token_time = now
        end = clock()
        if record.first_token_time is None:
            record.fail(end, "the response carried no token")
            return ""
        record.status, record.end_time = OK, end
        if record.output_tokens is not None:
            record.output_tokens_source = "usage"
        else:
            record.output_tokens, record.output_tokens_source = num_chunks, "chunks"
        return "".join(pieces)

    async def _count_output(self, record: RequestRecord, text: str) -> None:
        """Without `usage`, the output is counted with the tokenizer (chunk count as the last resort)."""
        if record.output_tokens_source != "chunks" or self.output_counter is None:
            return
        try:
            record.output_tokens = await self.output_counter.count(text, add_special_tokens=False)
            record.output_tokens_source = "tokenizer"
        except (httpx.HTTPError, ValueError):
            pass  # keep the chunk count

    async def aclose(self) -> None:
        await self.http.aclose()


def _choice_text(choice: dict, chat: bool) -> tuple[str, bool]:
    """(text, whether this chunk brought a token). A chat role-only preamble and an empty final
    chunk that only carries finish_reason bring none; an empty mid-stream chunk (a token whose
    text is held back, e.g. part of a UTF-8 character) does."""
    if chat:
        delta = choice.get("delta") or {}
        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        if text:
            return text, True
        return "", "role" not in delta and "content" in delta and choice.get("finish_reason") is None
    text = choice.get("text") or ""
    return text, bool(text) or choice.get("finish_reason") is None


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


def _describe(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.ConnectError):
        return f"connection failed: {e}" if str(e) else "connection failed"
    if isinstance(e, httpx.TimeoutException):
        return f"timed out ({type(e).__name__})"
    return f"{type(e).__name__}: {e}"
