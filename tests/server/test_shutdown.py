"""SIGTERM with a short --shutdown-timeout on a server of its own: new connections are refused, a
request that can finish within the grace period does, the ones still running when it is over end
cleanly (a stream: a finish_reason "abort" chunk, usage, [DONE]; a non-streamed one: a 503 in
OpenAI's error shape), and the process exits 0 soon after."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.server.conftest import scrape, start_server

GRACE_S = 3.0
SHORT_TOKENS = 6  # ~5 decode steps after its first chunk: well inside the grace period
LONG_TOKENS = 2000  # minutes on CPU, seconds on a GPU: still running when the grace period is over
LONG = {"prompt": "Once upon a time", "max_tokens": LONG_TOKENS, "ignore_eos": True, "temperature": 0.8}
USAGE = {"stream_options": {"include_usage": True}}


@pytest.fixture
def draining(model_dir):
    with start_server(model_dir, "--shutdown-timeout", str(GRACE_S), "--max-model-len", "2048") as s:
        yield s


class _Stream(threading.Thread):
    """POSTs a streamed request and keeps every SSE payload; `started` is set at the first one."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.started = threading.Event()
        self.status: int | None = None
        self.payloads: list = []  # parsed chunks, then "[DONE]"
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line.removeprefix("data: ")
                        self.payloads.append(data if data == "[DONE]" else json.loads(data))
                        self.started.set()
        except BaseException as e:  # noqa: BLE001 - the test asserts there is none
            self.error = e
        finally:
            self.ended_at = time.monotonic()
            self.started.set()

    def finish_reasons(self) -> list:
        return [c["finish_reason"] for p in self.payloads if p != "[DONE]" for c in p["choices"]]

    def usage(self) -> dict:
        return next(p["usage"] for p in self.payloads if p != "[DONE]" and p.get("usage"))


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _refused(url: str) -> bool:
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=5)
    except httpx.ConnectError:
        return True
    return r.status_code == 503


def test_sigterm_drains_then_aborts_the_rest_cleanly_and_exits_0(draining):
    from openai import OpenAI

    url = draining.url
    long_stream = _Stream(f"{url}/v1/completions", {**LONG, **USAGE, "stream": True})
    long_stream.start()
    non_streamed: dict = {}

    def post_long() -> None:
        non_streamed["response"] = httpx.post(f"{url}/v1/completions", json=LONG, timeout=60)

    poster = threading.Thread(target=post_long, daemon=True)
    poster.start()
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    chat: dict = {"chunks": []}
    chat_started = threading.Event()

    def chat_long() -> None:
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Tell me a long story."}],
                max_tokens=LONG_TOKENS,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:  # the official client must see a normal end of stream
                chat["chunks"].append(chunk)
                chat_started.set()
        except BaseException as e:  # noqa: BLE001 - the test asserts there is none
            chat["error"] = e
        finally:
            chat_started.set()

    chatter = threading.Thread(target=chat_long, daemon=True)
    chatter.start()

    assert long_stream.started.wait(60) and chat_started.wait(60)
    _wait(lambda: scrape(url)["tachyon:num_requests_running"] >= 3, 60, "three long requests running")
    short = _Stream(f"{url}/v1/completions", {**LONG, **USAGE, "max_tokens": SHORT_TOKENS, "stream": True})
    short.start()
    assert short.started.wait(60)

    sigterm_at = time.monotonic()
    draining.proc.send_signal(signal.SIGTERM)
    _wait(lambda: _refused(url), 10, "new requests to be refused")
    assert draining.proc.wait(GRACE_S + 30) == 0, draining.output()
    exited_after = time.monotonic() - sigterm_at
    for thread in (long_stream, poster, chatter, short):
        thread.join(10)

    # in flight at SIGTERM, and done within the grace period: complete and normal
    assert short.error is None and short.status == 200, short.error
    assert short.finish_reasons()[-1] == "length" and short.payloads[-1] == "[DONE]"
    assert short.usage()["completion_tokens"] == SHORT_TOKENS
    # still running when the grace period was over: a clean end, not a cut connection
    assert long_stream.error is None and long_stream.status == 200, long_stream.error
    assert long_stream.finish_reasons()[-1] == "abort" and long_stream.payloads[-1] == "[DONE]"
    assert 0 < long_stream.usage()["completion_tokens"] < LONG_TOKENS
    assert "error" not in chat, chat.get("error")
    finals = [c.choices[0].finish_reason for c in chat["chunks"] if c.choices]
    assert finals[-1] == "abort" and all(f is None for f in finals[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chat["chunks"] if c.choices)
    response = non_streamed["response"]
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 503
    assert "shutting down" in error["message"]
    # the aborted requests ended at the grace period, not at uvicorn's backstop cancellation later
    assert long_stream.ended_at - sigterm_at >= GRACE_S - 0.5
    assert exited_after < GRACE_S + 15, exited_after
    output = draining.output()
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
