"""Prefill/decode mode. Plain instances ignore `kv_transfer_params` (the decode one recomputes the
prompt) and `--role prefill|decode` instances hand the KV over: either way the text equals one
instance's. Fake instances pin the contract's exact bodies and the failure handling: a prefill 4xx
passed on, 5xx and dead instances failed over, a 503 when none is left, a decode stream that breaks
ending with an error event, /health following the instances'."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import pytest
from openai import OpenAI

from tests.router.conftest import requests_by_instance, start_instances, start_router
from tests.router.fake_instance import FakeInstance, Reply, completion
from tests.server.conftest import scrape

KV = {"remote_kv": "127.0.0.1:9", "transfer_id": "t-1", "connector": "tcp"}  # what a prefill instance answers
KV_DECODE = {"do_remote_decode": True}  # what the router asks of it
EVENTS = [completion("Hello"), completion(" world")]


def test_plain_instances_give_one_instances_text(replicas):
    prefill, decode = replicas
    kwargs = {"model": "smollm2-3-layers", "prompt": "The capital of France is", "max_tokens": 10, "temperature": 0}
    expected = OpenAI(base_url=f"{decode.url}/v1", api_key="unused").completions.create(**kwargs).choices[0].text
    with start_router("--prefill", prefill.url, "--decode", decode.url) as router:
        client = OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert client.completions.create(**kwargs).choices[0].text == expected
        stream = client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        assert "".join(c.choices[0].text for c in stream if c.choices) == expected
        chat = {"model": kwargs["model"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
        assert client.chat.completions.create(**chat).choices[0].message.content
        assert requests_by_instance(router.url, "prefill") == {prefill.url: 3}
        assert requests_by_instance(router.url, "decode") == {decode.url: 3}
    assert scrape(decode.url)["tachyon:prompt_tokens_total"] > 0


def test_prefill_and_decode_roles_hand_over_the_kv(shallow_model_dir):
    with start_instances(shallow_model_dir, 2, ("--role", "prefill"), ("--role", "decode")) as (prefill, decode):
        body = {"prompt": "The capital of France is a city that " * 8, "max_tokens": 10, "temperature": 0}
        expected = httpx.post(f"{prefill.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        with start_router("--prefill", prefill.url, "--decode", decode.url) as router:
            r = httpx.post(f"{router.url}/v1/completions", json=body, timeout=60)
            assert r.json()["choices"][0]["text"] == expected
            with httpx.stream("POST", f"{router.url}/v1/completions", json={**body, "stream": True}) as r:
                chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert "".join(c["choices"][0]["text"] for c in chunks) == expected
            assert requests_by_instance(router.url, "prefill") == {prefill.url: 2}
        metrics = scrape(decode.url)
        assert metrics["tachyon:kv_transfer_failures_total"] == 0
        assert metrics["tachyon:kv_transfer_blocks_total"] > 0  # the first request's; the second hits the cache


@contextlib.contextmanager
def fakes_and_router(prefill: list[Reply], decode: list[Reply], *flags: str):
    instances = [FakeInstance(r) for r in prefill], [FakeInstance(r) for r in decode]
    try:
        urls = ["--prefill", *(f.url for f in instances[0]), "--decode", *(f.url for f in instances[1])]
        with start_router(*urls, *flags) as router:
            yield router, *instances
    finally:
        for fake in instances[0] + instances[1]:
            fake.close()


def _failures(router_url: str, instance_url: str, role: str, reason: str) -> float:
    labels = f'instance="{instance_url}",reason="{reason}",role="{role}"'
    return scrape(router_url).get(f"tachyon_router:upstream_failures_total{{{labels}}}", 0.0)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_contract_bodies(path):
    original = {"prompt": "Hi", "max_tokens": 50, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    if path.endswith("chat/completions"):
        original = {**original, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 50}
        del original["prompt"]
    prefill_reply = Reply(body=completion("x", kv_transfer_params={**KV, "do_remote_decode": True}))  # echoed
    with fakes_and_router([prefill_reply], [Reply(events=EVENTS)]) as (router, (prefill,), (decode,)):
        auth = {"Authorization": "Bearer sk-test"}
        with httpx.stream("POST", router.url + path, json=original, headers=auth, timeout=10) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert payloads == [*(json.dumps(e) for e in EVENTS), "[DONE]"]
    expected_prefill = {**original, "stream": False, "max_tokens": 1, "n": 1, "kv_transfer_params": KV_DECODE}
    if "max_completion_tokens" in original:
        expected_prefill["max_completion_tokens"] = 1
    del expected_prefill["stream_options"]
    assert [(p.path, p.body) for p in prefill.received] == [(path, expected_prefill)]
    decode_kv = {**KV, "do_remote_prefill": True}
    assert [(d.path, d.body) for d in decode.received] == [(path, {**original, "kv_transfer_params": decode_kv})]
    assert (
        prefill.received[0].headers["authorization"] == decode.received[0].headers["authorization"] == "Bearer sk-test"
    )


def test_prefill_client_error_is_passed_on_unchanged():
    error = {"error": {"message": "bad top_p", "type": "invalid_request_error", "param": "top_p", "code": 400}}
    with fakes_and_router([Reply(status=400, body=error)], [Reply()]) as (router, _, (decode,)):
        r = httpx.post(f"{router.url}/v1/completions", json={"prompt": "Hi", "top_p": 7})
        assert (r.status_code, r.json()) == (400, error)
        assert decode.received == []


def test_failing_prefill_instances_are_skipped_then_503():
    broken = Reply(status=500, body={"error": {"message": "boom", "type": "server_error", "param": None, "code": 500}})
    with fakes_and_router([broken, Reply(body=completion("x", kv_transfer_params=KV))], [Reply()]) as fakes:
        router, (bad, good), (decode,) = fakes
        for _ in range(2):  # idle instances are taken in turn: one of these requests meets the bad one first
            assert httpx.post(f"{router.url}/v1/completions", json={"prompt": "Hi"}).status_code == 200
        assert len(bad.received) == 1 and len(good.received) == 2
        assert _failures(router.url, bad.url, "prefill", "server_error") == 1
        assert [d.body["kv_transfer_params"] for d in decode.received] == [{**KV, "do_remote_prefill": True}] * 2
        good.reply = broken
        r = httpx.post(f"{router.url}/v1/completions", json={"prompt": "Hi"})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["type"] == "service_unavailable" and error["message"].startswith("no prefill instance")
        assert error["message"].count("boom") == 2  # each instance's own error


def test_decode_failure_before_any_byte_retries_with_the_same_kv():
    failing = [
        (Reply(), "unreachable"),  # closed once the router is up
        (Reply(drop=True), "disconnected"),  # takes the request, closes the connection
        (Reply(events=[], break_stream=True), "disconnected"),  # a 200 whose stream dies before its first event
        (Reply(status=502), "server_error"),
    ]
    replies = [Reply(body=completion("x", kv_transfer_params=KV))], [*(r for r, _ in failing), Reply(events=EVENTS)]
    with fakes_and_router(*replies, "--health-interval", "60") as (router, _, decode):
        *bad, good = decode
        bad[0].close()
        good.num_waiting = 10  # the busiest, so least-outstanding tries it last, once its /metrics is scraped
        _wait_for_metric(router.url, f'tachyon_router:num_requests_waiting{{instance="{good.url}",role="decode"}}', 10)
        r = httpx.post(f"{router.url}/v1/completions", json={"prompt": "Hi", "stream": True}, timeout=10)
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert [_failures(router.url, fake.url, "decode", reason) for fake, (_, reason) in zip(bad, failing)] == [1] * 4
        kv = {**KV, "do_remote_prefill": True}
        assert [got.body["kv_transfer_params"] for fake in decode for got in fake.received] == [kv] * 4


def _wait_for_metric(router_url: str, name: str, value: float, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while scrape(router_url).get(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.1)


def test_decode_stream_that_breaks_ends_with_an_error_event():
    replies = [Reply(body=completion("x", kv_transfer_params=KV))], [Reply(events=EVENTS, break_stream=True)]
    with fakes_and_router(*replies) as (router, _, (decode,)):
        body = {"prompt": "Hi", "stream": True}
        with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=10) as r:
            payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert payloads[:2] == [json.dumps(e) for e in EVENTS] and payloads[-1] == "[DONE]"
        error = json.loads(payloads[2])["error"]
        assert error["code"] == 502 and "mid-stream" in error["message"]
        outcome = f'tachyon_router:requests_total{{instance="{decode.url}",outcome="broken",role="decode"}}'
        assert scrape(router.url)[outcome] == 1


def test_health_follows_the_instances():
    replies = [Reply(body=completion("x", kv_transfer_params=KV))], [Reply(events=EVENTS)]
    with fakes_and_router(*replies, "--health-interval", "0.2") as (router, (prefill,), (decode,)):
        prefill.health_status = 503
        _wait_for_status(f"{router.url}/health", 503)
        error = httpx.get(f"{router.url}/health").json()["error"]
        assert error["type"] == "service_unavailable" and "prefill and decode" in error["message"]
        healthy = f'tachyon_router:instance_healthy{{instance="{prefill.url}",role="prefill"}}'
        assert scrape(router.url)[healthy] == 0
        prefill.health_status = 200
        _wait_for_status(f"{router.url}/health", 200)
        assert scrape(router.url)[healthy] == 1
        assert httpx.post(f"{router.url}/v1/completions", json={"prompt": "Hi", "stream": True}).status_code == 200


def _wait_for_status(url: str, status: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(url).status_code != status:
        assert time.monotonic() < deadline, f"GET {url} never answered {status}"
        time.sleep(0.05)
