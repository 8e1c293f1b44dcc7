"""Perplexity of a text on the in-process engine, over strided rolling windows (HF's documented recipe).

Called by `tachyon eval` (built-in `lee` task and .txt files), on the engine or a server, and by tests against
HF transformers. The text
is tokenized once (with the tokenizer's BOS in front when the tokenizer adds one) and cut into windows of at
most `max_length` tokens that start every `stride` tokens; each window scores only the tokens the previous
window did not reach, so with stride < max_length every token but the first is scored exactly once, with
at least max_length - stride tokens of context (stride == max_length: disjoint windows, each window's first
token unscored, as in HF's recipe):

    tokens   0 1 2 3 4 5 6 7 8 9        max_length 6, stride 3
    window 1 [c s s s s s]              s: scored, c: context only
    window 2       [c c c s s s]
    window 3             [c c c s]      ends at the last token

All windows go to the model in one call, so they are batched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tachyon.evals.eval_model import as_eval_model
from tachyon.evals.scoring import score_tokens

if TYPE_CHECKING:
    from tachyon import LLM
    from tachyon.evals.eval_model import EvalModel

DEFAULT_MAX_LENGTH = 1024


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window
    end: int  # one past its last token
    num_targets: int  # its last num_targets tokens are scored


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float  # -sum of log p (nats) over the scored tokens
    num_tokens: int  # scored tokens
    num_bytes: int  # UTF-8 bytes of the text
    num_words: int  # whitespace-separated words of the text
    num_windows: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.num_tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / self.num_bytes / math.log(2)

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll_sum / self.num_bytes)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll_sum / self.num_words)

    def metrics(self) -> dict[str, float]:
        return {
            "ppl": self.ppl,
            "nll": self.mean_nll,
            "bits_per_byte": self.bits_per_byte,
            "byte_perplexity": self.byte_perplexity,
            "word_perplexity": self.word_perplexity,
        }


def strided_windows(num_tokens: int, max_length: int, stride: int) -> list[Window]:
    """HF's strided perplexity loop: windows [begin, min(begin + max_length, n)) for begin = 0, stride, ...
    until one reaches the end; each scores the tokens past the previous window's end, except a window's
    first token, which has no context inside the window."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    if num_tokens < 2:
        raise ValueError(f"perplexity needs a text of at least 2 tokens, got {num_tokens}")
    windows, prev_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + max_length, num_tokens)
        windows.append(Window(begin, end, min(end - prev_end, end - begin - 1)))
        prev_end = end
        if end == num_tokens:
            break
    return windows


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front when asked for special tokens (Llama does,
    GPT-2-style tokenizers such as SmolLM2's do not)."""
    bos = tokenizer.bos_token_id
    with_special = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    return bos is not None and with_special[:1] == [bos] and plain[:1] != [bos]


def perplexity_token_ids(tokenizer, text: str) -> list[int]:
    """The text's tokens, behind the BOS token when the tokenizer adds one (then every text token is scored)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [tokenizer.bos_token_id, *ids] if adds_bos(tokenizer) else ids


def perplexity(
    model: LLM | EvalModel,
    text: str,
    max_length: int = DEFAULT_MAX_LENGTH,
    stride: int | None = None,
    use_tqdm: bool = False,
) -> PerplexityResult:
    """Perplexity of `text`; `stride` defaults to max_length // 2 (HF's example: 1024 / 512). A window must
    fit the model: max_length < its max_model_len."""
    model = as_eval_model(model)
    stride = stride if stride is not None else max(1, max_length // 2)
    ids = perplexity_token_ids(model.get_tokenizer(), text)
    windows = strided_windows(len(ids), max_length, stride)
    requests = [(ids[w.begin : w.end - w.num_targets], ids[w.end - w.num_targets : w.end]) for w in windows]
    scores = score_tokens(model, requests, max_length, use_tqdm=use_tqdm)
    return PerplexityResult(
        nll_sum=-sum(s.logprob for s in scores),
        num_tokens=sum(w.num_targets for w in windows),
        num_bytes=len(text.encode("utf-8")),
        num_words=len(re.split(r"\s+", text.strip())),
        num_windows=len(windows),
    )
