"""Request data for `tachyon bench`: synthetic prompts with exact token counts, or prompts read
from a file (.jsonl, .csv, .txt) or a Hugging Face dataset (hf:NAME). Token counts come from a
`TokenCounter`: a local tokenizer (transformers) or the server's POST /tokenize. The runner prepares
a list of `RequestSpec`s before the clock starts and the scheduler cycles through it.

Exact synthetic prompts: random common words are joined into a text; a binary search finds the
most words whose token count stays within the target, then one-token words top it up. Words are
separated by spaces, which every byte-level or sentencepiece pre-tokenizer splits on, so counts
grow monotonically with the number of words. The final count is always checked."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from tachyon.hf_datasets import load_hf_dataset

WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "river garden window bridge forest mountain winter summer music letter paper table light voice market "
    "small large early young important public bad same able good new first last long great little own other "
    "old big high different local sure free better true whole clear easy strong simple quiet bright green "
    "is was have said make know think take see come want look use find give tell work call try ask need feel "
    "become leave put mean keep let begin seem help talk turn start show hear play run move like live believe "
    "hold bring happen write provide sit stand lose pay meet include continue set learn lead understand watch "
    "follow stop create speak read allow add spend grow open walk win offer remember love consider appear buy "
    "wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell require report"
).split()
FILLERS = (" a", " I", " the", " of", " and", " to", " in", ".", ",")  # one token in common vocabularies
MAX_FIT_ATTEMPTS = 8
TOKENIZE_CONCURRENCY = 16


class TokenCounter(Protocol):
    async def count(self, text: str, add_special_tokens: bool = True) -> int: ...


class LocalTokenCounter:
    """A tokenizer loadable by transformers: an HF folder or hub id, or a .gguf file."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer

        if name.endswith(".gguf"):
            path = os.path.abspath(name)
            self.tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(name)

    def count_now(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    async def count(self, text: str, add_special_tokens: bool = True) -> int:
        return self.count_now(text, add_special_tokens)


class ServerTokenCounter:
    """The server's POST /tokenize (vLLM's and Tachyon's), counting as /v1/completions does."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, model: str) -> None:
        self.http, self.url, self.model = http, f"{base_url}/tokenize", model

    async def count(self, text: str, add_special_tokens: bool = True) -> int:
        body = {"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens}
        r = await self.http.post(self.url, json=body)
        if r.status_code == 404:
            raise ValueError("the server has no POST /tokenize; pass --tokenizer NAME to count tokens locally")
        r.raise_for_status()
        data = r.json()
        return int(data["count"]) if "count" in data else len(data["tokens"])


@dataclass(frozen=True)
class TokenDist:
    """A token count: mean, optional normal spread (stdev), clipped to [low, high]."""

    flag: str  # the command-line flag, for error messages
    mean: int
    stdev: float = 0.0
    low: int | None = None
    high: int | None = None

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise ValueError(f"{self.flag} must be at least 1, got {self.mean}")
        if self.stdev < 0:
            raise ValueError(f"{self.flag}-stdev must be >= 0, got {self.stdev}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"{self.flag}-min ({self.low}) is above {self.flag}-max ({self.high})")
        if self.low is not None and self.low < 1:
            raise ValueError(f"{self.flag}-min must be at least 1, got {self.low}")

    def sample(self, rng: random.Random) -> int:
        n = self.mean if self.stdev == 0 else round(rng.gauss(self.mean, self.stdev))
        low = self.low if self.low is not None else 1
        high = self.high if self.high is not None else max(n, low)
        return max(low, min(high, n))


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    output_tokens: int | None  # max_tokens to send; None leaves it to the server
    prompt_tokens: int | None = None  # the exact count, for synthetic prompts


async def synthetic_requests(
    counter: TokenCounter,
    num_prompts: int,
    prompt: TokenDist,
    output: TokenDist,
    prefix_tokens: int = 0,
    seed: int = 0,
) -> list[RequestSpec]:
    """`num_prompts` distinct prompts. Prompt i has exactly prefix_tokens + its sampled prompt
    count tokens as the server counts them for /v1/completions (a BOS the tokenizer adds included);
    all share one prefix of exactly `prefix_tokens` tokens."""
    rng = random.Random(seed)
    num_special = await counter.count("")
    if prefix_tokens < 0:
        raise ValueError(f"--prefix-tokens must be >= 0, got {prefix_tokens}")
    if prefix_tokens and prefix_tokens <= num_special:
        raise ValueError(f"--prefix-tokens must be above {num_special}: the tokenizer adds {num_special} tokens")
    prefix = await fit_text(counter, "", prefix_tokens, random.Random(rng.random())) if prefix_tokens else ""
    sizes = [(prompt.sample(rng), output.sample(rng)) for _ in range(num_prompts)]
    smallest = min(n for n, _ in sizes)
    if not prefix_tokens and smallest <= num_special:
        raise ValueError(f"--prompt-tokens must be above {num_special}: the tokenizer adds {num_special} tokens")
    seeds = [rng.random() for _ in range(num_prompts)]
    limit = asyncio.Semaphore(TOKENIZE_CONCURRENCY)

    async def one(i: int) -> RequestSpec:
        num_prompt, num_output = sizes[i]
        async with limit:
            text = await fit_text(counter, prefix, prefix_tokens + num_prompt, random.Random(seeds[i]))
        return RequestSpec(text, num_output, prefix_tokens + num_prompt)

    return list(await asyncio.gather(*(one(i) for i in range(num_prompts))))


async def fit_text(counter: TokenCounter, head: str, target: int, rng: random.Random) -> str:
    """`head` followed by random words, exactly `target` tokens long."""
    for _ in range(MAX_FIT_ATTEMPTS):
        words = [rng.choice(WORDS) for _ in range(target + 4)]
        text = await _fit_words(counter, head, words, target)
        if text is not None:
            return text
    raise ValueError(f"could not build a prompt of exactly {target} tokens with this tokenizer")


async def _fit_words(counter: TokenCounter, head: str, words: Sequence[str], target: int) -> str | None:
    counts: dict[int, int] = {}

    async def count_first(j: int) -> int:
        if j not in counts:
            counts[j] = await counter.count(_join(head, words[:j]))
        return counts[j]

    if await count_first(0) > target:
        return None
    lo, hi = 0, len(words)  # count_first(lo) <= target; every word adds at least one token
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if await count_first(mid) <= target else (lo, mid)
    text, n = _join(head, words[:lo]), counts[lo]
    while n < target:
        for filler in FILLERS:
            m = await counter.count(text + filler)
            if n < m <= target:
                text, n = text + filler, m
                break
        else:
            return None
    return text


def _join(head: str, words: Sequence[str]) -> str:
    body = " ".join(words)
    return f"{head} {body}" if head and body else head or body


def load_file(path: str, output: TokenDist, seed: int = 0) -> list[RequestSpec]:
    """Prompts from a file. .jsonl: a `prompt` field and optional `output_tokens` per line; .csv: a
    `prompt` column (else the first) and optional `output_tokens`; .txt: one prompt per line. A row
    without output_tokens draws from --output-tokens; a row's own value is sent as it is."""
    rng = random.Random(seed)
    if path.startswith("hf:"):
        rows = _read_hf_dataset(path.removeprefix("hf:"))
    else:
        if not os.path.isfile(path):
            raise ValueError(f"--data {path}: no such file")
        ext = os.path.splitext(path)[1].lower()
        readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}
        if ext not in readers:
            raise ValueError(f"--data {path}: unsupported file type {ext!r}; use .jsonl, .csv, .txt or hf:NAME")
        rows = readers[ext](path)
    if not rows:
        raise ValueError(f"--data {path}: no prompts in the file")
    return [RequestSpec(p, n if n is not None else output.sample(rng)) for p, n in rows]


def _read_hf_dataset(spec: str) -> list[tuple[str, int | None]]:
    """hf:NAME[:CONFIG[:SPLIT]] (split `train` by default; NAME may be a local folder of data files): the
    `prompt` column, else `text`, else the first string column; `output_tokens` if the dataset has one."""
    data = load_hf_dataset(spec, default_split="train")
    strings = [c for c, f in data.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    column = next((c for c in ("prompt", "text", *strings) if c in data.column_names), None)
    if column is None:
        raise ValueError(f"--data hf:{spec}: no text column (columns: {', '.join(data.column_names)})")
    counts = data["output_tokens"] if "output_tokens" in data.column_names else [None] * len(data)
    return [(p, None if n is None else int(n)) for p, n in zip(data[column], counts) if p]


def _read_jsonl(path: str) -> list[tuple[str, int | None]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"--data {path}:{line_no}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"--data {path}:{line_no}: expected an object with a string `prompt` field")
            rows.append((row["prompt"], _int_or_none(row.get("output_tokens"), path, line_no)))
    return rows


def _read_csv(path: str) -> list[tuple[str, int | None]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return []
        column = "prompt" if "prompt" in reader.fieldnames else reader.fieldnames[0]
        return [
            (row[column], _int_or_none(row.get("output_tokens") or None, path, line_no))
            for line_no, row in enumerate(reader, 2)
            if row.get(column)
        ]


def _read_txt(path: str) -> list[tuple[str, int | None]]:
    with open(path, encoding="utf-8") as f:
        return [(line.rstrip("\n"), None) for line in f if line.strip()]


def _int_or_none(value, path: str, line_no: int) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--data {path}:{line_no}: output_tokens {value!r} is not an integer") from None
