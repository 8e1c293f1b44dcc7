"""Two replicas behind `tachyon router`: the OpenAI client gets the same greedy text as straight
from a replica, requests spread over both, a bad body is refused without reaching them, and a
client that leaves mid-stream has its request aborted on the replica."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import OpenAI

from tests.router.conftest import requests_by_instance, start_router
from tests.server.conftest import scrape

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def router(replicas):
    with start_router("--replica", *(s.url for s in replicas)) as r:
        yield r


def _client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_completions_match_a_replica(router, replicas):
    direct, routed = _client(replicas[0].url), _client(router.url)
    model = routed.models.list().data[0].id
    kwargs = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    expected = direct.completions.create(**kwargs).choices[0].text
    for _ in range(2):  # consecutive requests alternate between the idle replicas
        assert routed.completions.create(**kwargs).choices[0].text == expected
        stream = routed.completions.create(**kwargs, stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices) == expected


def test_chat_matches_a_replica(router, replicas):
    direct, routed = _client(replicas[1].url), _client(router.url)
    kwargs = {"model": "smollm2-3-layers", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    expected = direct.chat.completions.create(**kwargs).choices[0].message.content
    for _ in range(2):
        assert routed.chat.completions.create(**kwargs).choices[0].message.content == expected
        stream = routed.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage.completion_tokens == 12


def test_concurrent_requests_spread_over_both_replicas(router, replicas):
    before = [scrape(s.url)["tachyon:prompt_tokens_total"] for s in replicas]
    served_before = requests_by_instance(router.url)

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=router.url, timeout=60) as http:
            body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
            responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(8)))
            return [r.status_code for r in responses]

    assert asyncio.run(send_all()) == [200] * 8
    after = [scrape(s.url)["tachyon:prompt_tokens_total"] for s in replicas]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    served = requests_by_instance(router.url)
    assert sum(served[s.url] - served_before.get(s.url, 0) for s in replicas) == 8


@pytest.mark.parametrize("body", [b'{"prompt": "unterminated', b"[1, 2]"])
def test_bad_json_is_a_400_in_openai_shape(router, body):
    served_before = requests_by_instance(router.url)
    r = httpx.post(f"{router.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400 and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert requests_by_instance(router.url) == served_before


def test_instance_errors_pass_through_unchanged(router, replicas):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": -1}
    direct = httpx.post(f"{replicas[0].url}/v1/completions", json=body)
    routed = httpx.post(f"{router.url}/v1/completions", json=body)
    assert direct.status_code == routed.status_code == 400
    assert routed.json() == direct.json()


def test_client_that_leaves_mid_stream_aborts_the_request_upstream(router, replicas):
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{router.url}/v1/completions", json=body, timeout=30) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        next(lines), next(lines)
        assert sum(scrape(s.url)["tachyon:num_requests_running"] for s in replicas) == 1
    deadline = time.monotonic() + 5
    while any(scrape(s.url)["tachyon:num_requests_running"] for s in replicas):
        assert time.monotonic() < deadline, "the replica kept generating for a client that left"
        time.sleep(0.1)
    in_flight = {k: v for k, v in scrape(router.url).items() if k.startswith("tachyon_router:num_requests_in_flight")}
    assert set(in_flight.values()) == {0.0}


def test_client_that_gives_up_on_a_whole_answer_aborts_it_upstream(router, replicas):
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{router.url}/v1/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 5
    while any(scrape(s.url)["tachyon:num_requests_running"] for s in replicas):
        assert time.monotonic() < deadline, "the replica kept generating for a client that left"
        time.sleep(0.1)
