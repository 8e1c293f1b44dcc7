"""Perplexity on the engine equals HF transformers' on the same strided windows (HF's documented recipe,
written here independently: plain forward + log_softmax), and the window split scores each token once."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from tachyon.corpus import evaluation_text
from tachyon.evals.perplexity import perplexity, perplexity_token_ids, strided_windows

MAX_LENGTH, STRIDE, NUM_DOCS = 128, 96, 4  # ~500 tokens of lee.cor in 6 overlapping windows


def hf_strided_nll(model, input_ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """HF's "Perplexity of fixed-length models" loop: labels outside the window's new tokens are -100;
    the loss sums -log p over the remaining labels, shifted by one as the model's loss does."""
    seq_len = input_ids.size(1)
    nll_sum, num_scored, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        ids = input_ids[:, begin:end]
        labels = ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            logprobs = model(ids).logits.float().log_softmax(-1)[0, :-1]  # [L-1, V] predicts tokens 1..L-1
        targets = labels[0, 1:]
        keep = targets != -100
        nll_sum -= logprobs[keep].gather(1, targets[keep].unsqueeze(1)).sum().item()
        num_scored += int(keep.sum())
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, num_scored


def test_engine_perplexity_equals_hf(eval_llm, hf_model, model_dir):
    text = evaluation_text(NUM_DOCS)
    ours = perplexity(eval_llm, text, max_length=MAX_LENGTH, stride=STRIDE)
    input_ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    nll_sum, num_scored = hf_strided_nll(hf_model, input_ids, MAX_LENGTH, STRIDE)
    assert ours.num_tokens == num_scored == input_ids.size(1) - 1  # SmolLM2 adds no BOS: token 0 is context
    assert ours.num_windows > 3
    assert ours.ppl == pytest.approx(math.exp(nll_sum / num_scored), rel=1e-3)
    assert ours.mean_nll == pytest.approx(nll_sum / num_scored, rel=1e-3)
    assert ours.num_bytes == len(text.encode("utf-8"))
    assert ours.bits_per_byte == pytest.approx(nll_sum / math.log(2) / ours.num_bytes, rel=1e-3)
    assert ours.byte_perplexity == pytest.approx(2**ours.bits_per_byte, rel=1e-9)
    assert set(ours.metrics()) == {"ppl", "nll", "bits_per_byte", "byte_perplexity", "word_perplexity"}


@pytest.mark.parametrize(("num_tokens", "max_length", "stride"), [(10, 6, 3), (10, 6, 5), (7, 8, 4), (33, 5, 1)])
def test_windows_score_every_token_but_the_first_once(num_tokens, max_length, stride):
    windows = strided_windows(num_tokens, max_length, stride)
    scored = [p for w in windows for p in range(w.end - w.num_targets, w.end)]
    assert scored == list(range(1, num_tokens))
    assert all(w.end - w.begin <= max_length and w.begin == i * stride for i, w in enumerate(windows))
    assert windows[-1].end == num_tokens


def test_disjoint_windows_leave_each_window_start_unscored():
    """stride == max_length: as in HF's recipe, a window's first token has no context inside it."""
    windows = strided_windows(10, 4, 4)
    scored = [p for w in windows for p in range(w.end - w.num_targets, w.end)]
    assert scored == [1, 2, 3, 5, 6, 7, 9]


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="stride must be in"):
        strided_windows(100, 8, 9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        strided_windows(1, 8, 4)


class _Tokenizer:
    """Characters as token ids; `adds_bos` says whether special tokens mean a leading BOS (id 1)."""

    bos_token_id = 1

    def __init__(self, adds_bos: bool) -> None:
        self.adds_bos = adds_bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [ord(c) for c in text]
        return [1, *ids] if self.adds_bos and add_special_tokens else ids


def test_bos_is_prepended_only_when_the_tokenizer_adds_one():
    assert perplexity_token_ids(_Tokenizer(adds_bos=True), "ab") == [1, 97, 98]
    assert perplexity_token_ids(_Tokenizer(adds_bos=False), "ab") == [97, 98]
