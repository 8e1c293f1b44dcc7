"""The official `openai` client against a real server: completions and chat, streamed and not,
n > 1, stop strings, logprobs, seeded sampling, usage counts and echoed prompt logprobs."""

from __future__ import annotations

import math

import httpx
import pytest

PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_models_health_version_tokenize(base_url, model_name, tokenizer):
    assert model_name == "smollm2"  # the model folder's basename
    assert httpx.get(f"{base_url}/health").status_code == 200
    assert httpx.get(f"{base_url}/version").json()["version"]
    tok = httpx.post(f"{base_url}/tokenize", json={"prompt": PROMPT}).json()
    assert tok["tokens"] == tokenizer.encode(PROMPT) and tok["count"] == len(tok["tokens"])
    assert tok["max_model_len"] == 1024
    assert httpx.post(f"{base_url}/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == PROMPT
    chat = httpx.post(f"{base_url}/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] == len(_chat_ids(tokenizer, MESSAGES))


def _chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_completion_usage_matches_tokenizer(client, model_name, tokenizer):
    out = client.completions.create(
        model=model_name, prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.choices[0].finish_reason == "length" and out.choices[0].text
    assert out.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6


def test_chat_usage_matches_template(client, model_name, tokenizer):
    out = client.chat.completions.create(model=model_name, messages=MESSAGES, max_completion_tokens=5, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    assert out.usage.prompt_tokens == len(_chat_ids(tokenizer, MESSAGES))
    assert 1 <= out.usage.completion_tokens <= 5


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_seeded_stream_concatenates_to_the_whole_text(client, model_name, api):
    kwargs = dict(model=model_name, max_tokens=12, temperature=0.9, seed=1234)
    if api == "completions":
        whole = client.completions.create(prompt=PROMPT, **kwargs).choices[0].text
        chunks = client.completions.create(prompt=PROMPT, stream=True, **kwargs)
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        whole = client.chat.completions.create(messages=MESSAGES, **kwargs).choices[0].message.content
        chunks = list(client.chat.completions.create(messages=MESSAGES, stream=True, **kwargs))
        assert chunks[0].choices[0].delta.role == "assistant"
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole and streamed == whole


def test_n_and_multiple_prompts_get_openai_indexes(client, model_name):
    out = client.completions.create(
        model=model_name, prompt=["Hello", "One, two,"], n=2, max_tokens=3, temperature=1.0, seed=7
    )
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert 4 <= out.usage.completion_tokens <= 12
    chunks = client.completions.create(
        model=model_name, prompt=["Hello", "One, two,"], n=2, max_tokens=3, stream=True, seed=7,
        stream_options={"include_usage": True},
    )  # fmt: skip
    streamed: dict[int, str] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.usage or usage
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {c.index: c.text for c in out.choices}
    assert usage.completion_tokens == out.usage.completion_tokens
    chat = client.chat.completions.create(model=model_name, messages=MESSAGES, n=2, max_tokens=4, seed=3)
    assert [c.index for c in chat.choices] == [0, 1]


def test_token_id_prompts(client, model_name, tokenizer):
    ids = tokenizer.encode(PROMPT)
    by_ids = client.completions.create(model=model_name, prompt=[ids, ids], max_tokens=5, temperature=0)
    by_text = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == [by_text.choices[0].text] * 2


def test_stop_string_ends_the_text(client, model_name):
    base = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    stop = base.strip().split()[1]  # a word the greedy continuation is known to reach
    out = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop"
    assert stop not in out.choices[0].text and base.startswith(out.choices[0].text)
    chat = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=16, temperature=0, stop=["e"])
    assert "e" not in chat.choices[0].message.content


def test_completion_logprobs_legacy_shape(client, model_name):
    out = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == out.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 3 <= len(top) <= 4
        assert math.isclose(value, max(top.values()), abs_tol=1e-6)  # greedy picks the top token
        assert top[token] == value
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(5)]


def test_chat_logprobs_shape(client, model_name):
    out = client.chat.completions.create(
        model=model_name, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert 1 <= len(content) <= 4 and "".join(e.token for e in content) == out.choices[0].message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode()) and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
    streamed = client.chat.completions.create(
        model=model_name, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in content]


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_prompt_logprobs_match_the_offline_engine(client, model_name, model_dir, tokenizer, max_tokens):
    """lm-evaluation-harness scores choices with echo=True, logprobs=1, max_tokens=1 (or 0)."""
    from tachyon import LLM, SamplingParams

    prompt = "Question: what is the capital of France? Answer: Paris"
    out = client.completions.create(
        model=model_name, prompt=prompt, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0
    )
    lp = out.choices[0].logprobs
    ids = tokenizer.encode(prompt)
    assert out.choices[0].text.startswith(prompt)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == len(ids) + max_tokens
    offline = _offline_llm(LLM, model_dir).generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=1))
    expected = [pos[t].logprob for t, pos in zip(ids[1:], offline[0].prompt_logprobs[1:])]
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-5)
    if max_tokens == 0:
        assert out.choices[0].text == prompt and out.usage.completion_tokens == 0


_LLM_CACHE: dict = {}


def _offline_llm(cls, model_dir):
    if model_dir not in _LLM_CACHE:
        _LLM_CACHE[model_dir] = cls(model_dir, kv_cache_memory=64 * 2**20)
    return _LLM_CACHE[model_dir]


def test_streamed_echo_with_logprobs(client, model_name):
    chunks = list(
        client.completions.create(
            model=model_name, prompt=PROMPT, echo=True, logprobs=1, max_tokens=2, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert text.startswith(PROMPT) and "".join(tokens) == text
