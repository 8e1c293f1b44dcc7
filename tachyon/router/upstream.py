"""Forwarding one request to a pool: `Forwarder.open` tries instances until one answers (status
below 500), failing over while nothing has reached the client; `Forwarder.respond` relays that
answer. Nothing is committed to the client before the answer's first bytes are in hand: a JSON body
is read whole, an SSE stream up to its first chunk. An SSE stream that breaks later ends with an
error event and [DONE]; a client that leaves closes the upstream connection, which aborts the
request on the instance."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from tachyon.router.instance import Instance
from tachyon.router.metrics import RouterMetrics
from tachyon.router.pool import InstancePool
from tachyon.server.errors import error_body

logger = logging.getLogger(__name__)

RELAYED_HEADERS = ("content-type", "retry-after")
SSE_DONE = b"data: [DONE]\n\n"


class NoInstanceLeft(Exception):
    """Every instance of the pool was tried and failed: the client gets a 503."""


class UpstreamFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # the metrics label: unreachable | timeout | disconnected | server_error


@dataclass(eq=False)
class Answer:
    """An instance's answer with status < 500. A JSON one is complete in `head` (and its connection
    released); a stream has its first chunk in `head` and the rest still to come from `chunks`."""

    instance: Instance
    status: int
    headers: dict[str, str]
    head: bytes
    response: httpx.Response | None = None  # set while a stream is open
    chunks: AsyncIterator[bytes] | None = None
    outcome: str = "cancelled"  # a stream's, until it ends otherwise

    def json(self) -> dict | None:
        try:
            value = json.loads(self.head)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class Forwarder:
    def __init__(self, http: httpx.AsyncClient, metrics: RouterMetrics) -> None:
        self.http = http
        self.metrics = metrics

    async def open(self, pool: InstancePool, path: str, body: dict, headers: dict[str, str]) -> Answer:
        """The first answer below 500 from the pool's instances, in the policy's order; raises
        NoInstanceLeft when each one failed (each failure marks its instance unhealthy)."""
        tried: list[Instance] = []
        failures: list[str] = []
        while (instance := pool.pick(body, tried)) is not None:
            tried.append(instance)
            try:
                return await self._open_on(instance, path, body, headers)
            except UpstreamFailure as e:
                failures.append(f"{instance.url}: {e}")
                self.metrics.count_failure(instance, e.reason)
                instance.mark_unhealthy(str(e))
                logger.warning("%s %s failed on %s (%s); trying another instance", pool.role, path, instance.url, e)
        raise NoInstanceLeft(f"no {pool.role} instance could serve the request ({'; '.join(failures)})")

    async def _open_on(self, instance: Instance, path: str, body: dict, headers: dict[str, str]) -> Answer:
        request = self.http.build_request("POST", instance.url + path, json=body, headers=headers)
        instance.num_in_flight += 1
        response = None
        try:
            response = await self.http.send(request, stream=True)
            answer = await _read_head(instance, response)
        except BaseException as e:  # a failure, or cancelled because the client left
            await _release(instance, response)
            if isinstance(e, httpx.HTTPError):
                raise _failure(e) from None
            raise
        if answer.chunks is None:  # complete: the connection can go back to the pool
            await _release(instance, response)
            self.metrics.count_request(instance, "ok" if answer.status < 400 else "client_error")
        return answer

    def respond(self, answer: Answer) -> Response:
        """The answer as the client's response: whole, or relayed chunk by chunk as it streams."""
        if answer.chunks is None:
            return Response(answer.head, status_code=answer.status, headers=answer.headers)
        # the background close covers a stream that never starts (the client left first)
        return StreamingResponse(
            self._relay(answer),
            status_code=answer.status,
            headers=answer.headers,
            background=BackgroundTask(self._finish, answer),
        )

    async def _relay(self, answer: Answer) -> AsyncIterator[bytes]:
        last = answer.head
        try:
            yield answer.head
            async for chunk in answer.chunks:
                last = chunk or last
                yield chunk
            answer.outcome = "ok"
        except httpx.HTTPError as e:
            answer.outcome = "broken"
            self.metrics.count_failure(answer.instance, "broken_stream")
            answer.instance.mark_unhealthy(f"its stream broke: {type(e).__name__}")
            logger.warning("the stream from %s broke (%s); ending the client's stream", answer.instance.url, e)
            separator = b"" if last.endswith(b"\n\n") else b"\n\n"  # never inside a half-sent event
            message = f"the instance serving this request failed mid-stream ({type(e).__name__})"
            yield separator + f"data: {json.dumps(error_body(message, 502))}\n\n".encode() + SSE_DONE
        finally:
            with anyio.CancelScope(shield=True):  # a client that left cancels us: close upstream anyway
                await self._finish(answer)

    async def _finish(self, answer: Answer) -> None:
        if answer.response is None:
            return
        response, answer.response = answer.response, None
        await _release(answer.instance, response)
        self.metrics.count_request(answer.instance, answer.outcome)


async def _read_head(instance: Instance, response: httpx.Response) -> Answer:
    """A JSON answer whole, or a stream up to its first chunk; UpstreamFailure for a 5xx."""
    relayed = {k: v for k in RELAYED_HEADERS if (v := response.headers.get(k))}
    if response.status_code >= 500:
        text = (await response.aread()).decode("utf-8", "replace")
        raise UpstreamFailure("server_error", f"HTTP {response.status_code}: {_error_message(text)}")
    if relayed.get("content-type", "").startswith("text/event-stream"):
        chunks = response.aiter_bytes()
        head = await anext(chunks, b"")
        return Answer(instance, response.status_code, relayed, head, response, chunks)
    return Answer(instance, response.status_code, relayed, await response.aread())


def _failure(e: httpx.HTTPError) -> UpstreamFailure:
    if isinstance(e, httpx.TimeoutException):
        return UpstreamFailure("timeout", f"timed out ({type(e).__name__})")
    if isinstance(e, httpx.ConnectError):
        return UpstreamFailure("unreachable", _describe(e))
    return UpstreamFailure("disconnected", _describe(e))  # it took the request, then closed the connection


async def _release(instance: Instance, response: httpx.Response | None) -> None:
    instance.num_in_flight -= 1
    if response is not None:
        await response.aclose()


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _error_message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text[:300]
