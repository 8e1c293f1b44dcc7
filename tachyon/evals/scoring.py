"""Token-level scoring: loglikelihoods of continuations and greedy generations, on any `EvalModel`.

Shared by custom tasks (`tasks.py`), perplexity (`perplexity.py`) and the lm-evaluation-harness backend
(`lm_eval_backend.py`). Each call hands all its requests to the model at once so they are batched; this
module owns what the harness's HF backend decides (tokenization, truncation), the model only scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tachyon.evals.eval_model import Loglikelihood

if TYPE_CHECKING:
    from tachyon.evals.eval_model import EvalModel


def encode(tokenizer, text: str) -> list[int]:
    """The harness's HF-backend encoding: the tokenizer's own special tokens (so a BOS where the tokenizer
    adds one), except when the text already starts with the BOS token's text."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split for causal models: trailing whitespace of the context moves to the
    continuation, the whole string is encoded once, and the continuation is what follows the context's
    tokens."""
    num_spaces = len(context) - len(context.rstrip())
    if num_spaces:
        context, continuation = context[:-num_spaces], context[-num_spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def score_tokens(
    model: EvalModel, requests: Sequence[tuple[list[int], list[int]]], max_length: int, use_tqdm: bool = False
) -> list[Loglikelihood]:
    """Loglikelihood of each (context_ids, continuation_ids); the context is left-truncated so that at
    most max_length + 1 tokens go in (max_length scored positions), as the harness's HF backend does."""
    prompts, num_cont = [], []
    for context, continuation in requests:
        if not context:
            raise ValueError("a loglikelihood request needs at least one context token")
        if len(continuation) > max_length:
            raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {max_length}")
        prompts.append((context + continuation)[-(max_length + 1) :])
        num_cont.append(len(continuation))
    todo = [i for i, n in enumerate(num_cont) if n > 0]
    scores = model.score([prompts[i] for i in todo], [num_cont[i] for i in todo], use_tqdm=use_tqdm)
    results = [Loglikelihood(0.0, True)] * len(requests)
    for i, score in zip(todo, scores):
        results[i] = score
    return results


def generate_greedy(
    model: EvalModel,
    prompts: Sequence[list[int]],
    until: Sequence[str],
    max_gen_toks: int,
    max_length: int,
    use_tqdm: bool = False,
) -> list[str]:
    """Greedy continuation of each prompt, cut before the first stop string; the prompt is left-truncated
    to max_length - max_gen_toks tokens (the harness's HF backend's budget)."""
    max_ctx_len = max_length - max_gen_toks
    if max_ctx_len <= 0:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt within max_length {max_length}")
    texts = model.generate_greedy([list(p[-max_ctx_len:]) for p in prompts], max_gen_toks, until, use_tqdm)
    return [cut_at_stop(text, until) for text in texts]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """The text before the first occurrence of each stop string in turn (the harness's post-processing)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
