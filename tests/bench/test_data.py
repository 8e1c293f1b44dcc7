"""Request data: synthetic prompts have exactly the requested token counts (checked with the
model's tokenizer, whichever counter built them), share their prefix token for token, and files
(.jsonl, .csv, .txt) load with their output lengths sent as written."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from tachyon.bench.data import LocalTokenCounter, ServerTokenCounter, TokenDist, load_file, synthetic_requests


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def test_token_dist_samples_are_clipped_and_seeded():
    dist = TokenDist("--prompt-tokens", 40, stdev=30, low=10, high=60)
    samples = [dist.sample(random.Random(i)) for i in range(300)]
    assert min(samples) == 10 and max(samples) == 60 and len(set(samples)) > 20
    assert [dist.sample(random.Random(7)) for _ in range(3)] == [dist.sample(random.Random(7))] * 3
    assert TokenDist("--output-tokens", 8).sample(random.Random(0)) == 8
    with pytest.raises(ValueError, match="--output-tokens-min"):
        TokenDist("--output-tokens", 8, low=9, high=4)
    with pytest.raises(ValueError, match="--prompt-tokens must be at least 1"):
        TokenDist("--prompt-tokens", 0)


def test_synthetic_prompts_have_exact_counts_with_a_local_tokenizer(model_dir, local_tokenizer):
    counter = LocalTokenCounter(model_dir)
    prompt = TokenDist("--prompt-tokens", 40, stdev=25, low=1, high=90)
    output = TokenDist("--output-tokens", 6, stdev=2, low=2, high=9)
    specs = asyncio.run(synthetic_requests(counter, 40, prompt, output, seed=1))
    assert len({s.prompt for s in specs}) == 40
    assert len({s.prompt_tokens for s in specs}) > 10  # the spread is really there
    for spec in specs:
        assert count(local_tokenizer, spec.prompt) == spec.prompt_tokens
        assert 1 <= spec.prompt_tokens <= 90 and 2 <= spec.output_tokens <= 9
    assert asyncio.run(synthetic_requests(counter, 40, prompt, output, seed=1)) == specs  # seeded


def test_shared_prefix_is_the_same_tokens_in_every_prompt(model_dir, local_tokenizer):
    counter = LocalTokenCounter(model_dir)
    specs = asyncio.run(
        synthetic_requests(counter, 12, TokenDist("-p", 20), TokenDist("-o", 4), prefix_tokens=48, seed=2)
    )
    ids = [local_tokenizer(s.prompt)["input_ids"] for s in specs]
    assert all(len(x) == 48 + 20 == s.prompt_tokens for x, s in zip(ids, specs))
    assert all(x[:48] == ids[0][:48] for x in ids)
    assert len({tuple(x[48:]) for x in ids}) == 12


def test_synthetic_prompts_counted_by_the_servers_tokenize(bench_url, local_tokenizer):
    async def build():
        async with httpx.AsyncClient() as http:
            counter = ServerTokenCounter(http, bench_url, None)
            return await synthetic_requests(counter, 6, TokenDist("-p", 24, stdev=8, low=4), TokenDist("-o", 4), 16)

    for spec in asyncio.run(build()):
        assert count(local_tokenizer, spec.prompt) == spec.prompt_tokens


def test_files_load_prompts_and_output_lengths(tmp_path):
    output = TokenDist("--output-tokens", 7)
    jsonl = tmp_path / "p.jsonl"
    rows = [{"prompt": "a b", "output_tokens": 3}, {"prompt": "c"}, {"prompt": "d", "output_tokens": -1}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert [(s.prompt, s.output_tokens) for s in load_file(str(jsonl), output)] == [("a b", 3), ("c", 7), ("d", -1)]

    csv_file = tmp_path / "p.csv"
    csv_file.write_text('id,prompt,output_tokens\n1,"hello, world",5\n2,second,\n')
    assert [(s.prompt, s.output_tokens) for s in load_file(str(csv_file), output)] == [
        ("hello, world", 5),
        ("second", 7),
    ]

    txt = tmp_path / "p.txt"
    txt.write_text("first line\n\nsecond line\n")
    assert [s.prompt for s in load_file(str(txt), output)] == ["first line", "second line"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.parquet", "", "unsupported file type"),
        ("x.jsonl", '{"text": "no prompt"}\n', "prompt"),
        ("x.jsonl", "{not json\n", "not valid JSON"),
        ("x.jsonl", '{"prompt": "p", "output_tokens": "many"}\n', "not an integer"),
        ("x.txt", "\n\n", "no prompts"),
    ],
)
def test_bad_files_get_a_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_file(str(path), TokenDist("--output-tokens", 4))
    with pytest.raises(ValueError, match="no such file"):
        load_file(str(tmp_path / "missing.jsonl"), TokenDist("--output-tokens", 4))


def test_hugging_face_dataset_by_name_from_a_local_folder(tmp_path):
    """hf:NAME goes through `datasets.load_dataset`, which also takes a local folder of data files (no hub)."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    rows = [{"text": f"question {i}?", "output_tokens": 5 + i} for i in range(3)] + [{"text": "", "output_tokens": 1}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    specs = load_file(f"hf:{folder}", TokenDist("--output-tokens", 8))
    assert [(s.prompt, s.output_tokens) for s in specs] == [(f"question {i}?", 5 + i) for i in range(3)]
    with pytest.raises(ValueError, match="cannot load Hugging Face dataset"):
        load_file(f"hf:{tmp_path / 'missing'}", TokenDist("--output-tokens", 8))
