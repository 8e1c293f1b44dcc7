"""Bad input gets OpenAI's error shape and a 4xx (never a 500), and the server keeps serving;
--api-key, --max-waiting-requests and SIGTERM on a second server process."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import httpx
import pytest

from tests.server.conftest import scrape, start_server

GOOD = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"

BAD_COMPLETIONS = [
    ({**GOOD, "top_p": 7}, 400, "top_p"),
    ({**GOOD, "temperature": -1}, 400, "temperature"),
    ({**GOOD, "n": 0}, 400, "n"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 5000}, 400, "max_tokens"),
    ({**GOOD, "logprobs": 50}, 400, "logprobs"),
    ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    ({**GOOD, "prompt": None}, 400, "prompt"),
    ({"max_tokens": 2}, 400, "prompt"),
    ({**GOOD, "prompt": []}, 400, "prompt"),
    ({**GOOD, "prompt": ""}, 400, "prompt"),
    ({**GOOD, "prompt": [1] * 1100}, 400, "prompt"),
    ({**GOOD, "prompt": [10**9]}, 400, None),
    ({**GOOD, "prompt": [10**9], "stream": True}, 400, None),
    ({**GOOD, "stop": 5}, 400, "stop"),
    ({**GOOD, "model": "no-such-model"}, 404, "model"),
]
BAD_CHAT = [
    ({**CHAT, "messages": []}, 400, "messages"),
    ({**CHAT, "messages": [{"content": "no role"}]}, 400, "messages"),
    ({**CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
    ({**CHAT, "logprobs": True, "top_logprobs": 30}, 400, "top_logprobs"),
    ({**CHAT, "max_completion_tokens": -1}, 400, "max_tokens"),
    ({**CHAT, "model": "no-such-model"}, 404, "model"),
]


def _assert_error(r: httpx.Response, status: int, param: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"] == status
    if param is not None:
        assert error["param"] == param


def _assert_serving(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/completions", json=GOOD, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]


@pytest.mark.parametrize(("body", "status", "param"), BAD_COMPLETIONS)
def test_bad_completion_request(base_url, body, status, param):
    _assert_error(httpx.post(f"{base_url}/v1/completions", json=body, timeout=60), status, param)
    _assert_serving(base_url)


@pytest.mark.parametrize(("body", "status", "param"), BAD_CHAT)
def test_bad_chat_request(base_url, body, status, param):
    _assert_error(httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60), status, param)
    _assert_serving(base_url)


def test_malformed_json_and_unknown_routes(base_url):
    headers = {"content-type": "application/json"}
    _assert_error(httpx.post(f"{base_url}/v1/completions", content=b'{"prompt": ', headers=headers), 400, None)
    _assert_error(httpx.post(f"{base_url}/v1/completions", content=b"[1, 2]", headers=headers), 400, None)
    _assert_error(httpx.get(f"{base_url}/v1/nothing-here"), 404, None)
    _assert_error(httpx.post(f"{base_url}/detokenize", json={"tokens": [-1]}), 400, "tokens")
    _assert_error(httpx.post(f"{base_url}/tokenize", json={}), 400, "prompt")
    _assert_serving(base_url)


@pytest.fixture(scope="module")
def guarded(model_dir):
    """A second server: an API key, one sequence at a time, at most one waiting request, an inline
    chat template."""
    flags = ("--api-key", "sekrit", "--max-num-seqs", "1", "--max-waiting-requests", "1")
    with start_server(model_dir, *flags, "--chat-template", TEMPLATE) as s:
        yield s


def test_api_key(guarded):
    url = f"{guarded.url}/v1/completions"
    _assert_error(httpx.post(url, json=GOOD), 401, None)
    _assert_error(httpx.post(url, json=GOOD, headers={"Authorization": "Bearer wrong"}), 401, None)
    _assert_error(httpx.get(f"{guarded.url}/v1/models"), 401, None)
    assert httpx.post(url, json=GOOD, headers={"Authorization": "Bearer sekrit"}, timeout=60).status_code == 200
    assert httpx.get(f"{guarded.url}/health").status_code == 200


def test_chat_template_flag(guarded, tokenizer):
    body = {"messages": [{"role": "user", "content": "Hi there"}]}
    r = httpx.post(f"{guarded.url}/tokenize", json=body, headers={"Authorization": "Bearer sekrit"})
    assert r.json()["tokens"] == tokenizer.encode("[user] Hi there\n[assistant]", add_special_tokens=False)


def test_full_waiting_queue_gives_503_with_retry_after(guarded):
    headers = {"Authorization": "Bearer sekrit"}
    long = {**GOOD, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=guarded.url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=long) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            waiting = threading.Thread(target=_post_and_give_up, args=(guarded.url, headers, long), daemon=True)
            waiting.start()
            deadline = time.monotonic() + 20
            while scrape(guarded.url)["tachyon:num_requests_waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = http.post("/v1/completions", json=GOOD)
            _assert_error(r, 503, None)
            assert int(r.headers["retry-after"]) >= 1


def _post_and_give_up(url: str, headers: dict, body: dict) -> None:
    """Waits in the queue, then leaves (the server aborts it)."""
    with contextlib.suppress(httpx.TimeoutException):
        httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, headers=headers, timeout=4)


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(guarded):
    deadline = time.monotonic() + 30
    while scrape(guarded.url)["tachyon:num_requests_running"] > 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # the 503 test's streams are gone
    body = {**GOOD, "max_tokens": 20, "ignore_eos": True}
    result: dict = {}

    def request():
        r = httpx.post(
            f"{guarded.url}/v1/completions", json=body, headers={"Authorization": "Bearer sekrit"}, timeout=60
        )
        result["response"] = r

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)
    guarded.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert guarded.proc.wait(60) == 0, guarded.output()
    assert result["response"].status_code == 200
    assert result["response"].json()["usage"]["completion_tokens"] == 20


def test_serve_help_explains_every_flag():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tachyon.cli", "serve", "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    for flag in ("--host", "--port", "--api-key", "--served-model-name", "--chat-template", "--max-waiting-requests"):
        assert flag in run.stdout
    assert (
        "--uvicorn-log-level" in run.stdout and "--shutdown-timeout" in run.stdout and "--max-model-len" in run.stdout
    )
