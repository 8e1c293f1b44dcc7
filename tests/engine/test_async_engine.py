"""The async engine streams the same tokens as the offline API, aborts on early exit, and frees
every block afterwards."""

from __future__ import annotations

import asyncio

import pytest

from tachyon.config import EngineConfig
from tachyon.engine.async_engine import AsyncLLMEngine
from tachyon.sampling_params import SamplingParams
from tests.data.prompts import PROMPTS


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = AsyncLLMEngine(EngineConfig(model=model_dir))
    yield eng
    eng.shutdown()


async def _collect(engine, prompt, params, request_id):
    deltas, last = [], None
    async for out in engine.generate(prompt, params, request_id):
        deltas.append(out.outputs[0].delta_text)
        last = out
    return "".join(deltas), last


def test_concurrent_streams_match_one_at_a_time_and_deltas_concatenate(engine):
    params = SamplingParams(temperature=0, max_tokens=20)

    async def concurrent():
        return await asyncio.gather(*(_collect(engine, p, params, f"r{i}") for i, p in enumerate(PROMPTS[:8])))

    async def one_at_a_time():
        return [await _collect(engine, p, params, f"s{i}") for i, p in enumerate(PROMPTS[:8])]

    together, alone = asyncio.run(concurrent()), asyncio.run(one_at_a_time())
    for (streamed, last), (_, single) in zip(together, alone):
        assert last.finished
        assert streamed == last.outputs[0].text
        assert last.outputs[0].token_ids == single.outputs[0].token_ids


def test_leaving_the_stream_early_aborts_and_frees_blocks(engine):
    async def main():
        params = SamplingParams(temperature=0.7, max_tokens=500, ignore_eos=True, seed=3)
        streams = [engine.generate(p, params, f"drop{i}") for i, p in enumerate(PROMPTS)]
        for s in streams:
            await s.__anext__()
            await s.aclose()  # what a disconnecting client's handler does
        for _ in range(100):
            if engine.stats().num_running == 0 and engine.stats().num_waiting == 0:
                break
            await asyncio.sleep(0.05)

    asyncio.run(main())
    stats = engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks


def test_bad_request_raises_and_others_continue(engine):
    async def main():
        good = asyncio.create_task(_collect(engine, "Hello", SamplingParams(temperature=0, max_tokens=8), "good"))
        with pytest.raises(ValueError, match="empty"):
            await _collect(engine, "", SamplingParams(), "bad")
        return await good

    text, last = asyncio.run(main())
    assert last.finished and len(last.outputs[0].token_ids) == 8
