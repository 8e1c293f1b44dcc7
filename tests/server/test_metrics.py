"""/metrics: vLLM's metric names under `tachyon:`, engine gauges read live, token counters equal
to what the responses reported, latency histograms filled."""

from __future__ import annotations

import httpx

from tests.server.conftest import scrape, start_server


def test_metrics_after_requests(base_url, client, model_name):
    before = scrape(base_url)
    prompts = ["The sky is", "Once upon a time", "def fibonacci(n):"]
    usages = [client.completions.create(model=model_name, prompt=p, max_tokens=4, temperature=0).usage for p in prompts]
    stream = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages += [chunk.usage for chunk in stream if chunk.usage]
    after = scrape(base_url)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta("tachyon:prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("tachyon:generation_tokens_total") == sum(u.completion_tokens for u in usages)
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert delta(f"tachyon:{name}_count") == 4
        assert 0 < delta(f"tachyon:{name}_sum") < 60
    assert delta("tachyon:inter_token_latency_seconds_count") == sum(u.completion_tokens - 1 for u in usages)
    assert after["tachyon:num_requests_running"] == 0 and after["tachyon:num_requests_waiting"] == 0
    assert 0 <= after["tachyon:kv_cache_usage_perc"] <= 1
    assert after["tachyon:prefix_cache_queries_total"] >= after["tachyon:prefix_cache_hits_total"] >= 0
    assert "tachyon:num_preemptions_total" in after
    assert 'tachyon:e2e_request_latency_seconds_bucket{le="+Inf"}' in after


def test_metrics_content_type(base_url):
    r = httpx.get(f"{base_url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE tachyon:time_to_first_token_seconds histogram" in r.text
    assert "# TYPE tachyon:num_requests_running gauge" in r.text


def test_speculative_server_streams_the_same_text_and_counts_drafts(model_dir, client, model_name):
    """`--speculative-config` in vLLM's spelling: same greedy stream as the plain server, and the
    spec_decode counters in /metrics."""
    from openai import OpenAI

    prompt = "Repeat exactly: the printing press spread across Europe within fifty years. Repeat exactly:"
    kwargs = {"model": model_name, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**kwargs).choices[0].text
    spec = '{"method": "ngram", "num_speculative_tokens": 4, "adaptive": false}'
    with start_server(model_dir, "--speculative-config", spec) as server:
        spec_client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        stream = spec_client.completions.create(**kwargs, stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == plain
        metrics = scrape(server.url)
    assert metrics["tachyon:spec_decode_num_draft_tokens_total"] > 0
    assert (
        0
        < metrics["tachyon:spec_decode_num_accepted_tokens_total"]
        <= metrics["tachyon:spec_decode_num_draft_tokens_total"]
    )
    assert metrics["tachyon:spec_decode_num_drafts_total"] >= metrics["tachyon:spec_decode_num_steps_total"] > 0


def test_no_spec_decode_metrics_without_speculation(base_url):
    assert not any(name.startswith("tachyon:spec_decode") for name in scrape(base_url))
