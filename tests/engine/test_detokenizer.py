"""IncrementalDetokenizer against the tokenizer's own full decode: on text with emoji and CJK fed one
id at a time, on random id sequences, in the prompt's context, and with stop strings across tokens."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tachyon.engine.detokenizer import PROMPT_CONTEXT_TOKENS, IncrementalDetokenizer
from tachyon.sampling_params import SamplingParams

TEXTS = [
    "Hello 世界 🎉 wörld",
    "日本語のテキストです。中文也可以！",
    "family 👨‍👩‍👧‍👦, flag 🇫🇷, robot 🤖🚀 done",
    "<|im_start|>assistant\nhi there<|im_end|> after the end",
    "  leading spaces,\ttabs\n\nand ÅÄÖ ñ 한국어 mixed",
]
PIECES = ["the", " cat", " 🎉", "猫", "ü", " ", "\n", "STOP", "<|im_end|>", "é", "🇫🇷", "ab", "..."]
CHAT_PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25)))


def _stream(tokenizer, prompt_ids, out_ids, **params) -> tuple[IncrementalDetokenizer, list[str], int | None]:
    """Feed `out_ids` one by one; the deltas taken after each and at the end, and the index of the
    token whose add_token first returned True (the rest are not fed)."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, SamplingParams(**params))
    deltas, stopped_at = [], None
    for i, token in enumerate(out_ids):
        if detok.add_token(token):
            stopped_at = i
            break
        deltas.append(detok.take_delta(finished=False))
    deltas.append(detok.take_delta(finished=True))
    return detok, deltas, stopped_at


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("skip", [True, False])
def test_text_fed_token_by_token_decodes_like_the_whole(hf_tokenizer, skip):
    rng = random.Random(0)
    prompt = _encode(hf_tokenizer, CHAT_PROMPT)
    for text in TEXTS + [_random_text(rng) for _ in range(60)]:
        ids = _encode(hf_tokenizer, text)
        detok, deltas, _ = _stream(hf_tokenizer, prompt, ids, skip_special_tokens=skip)
        want = hf_tokenizer.decode(ids, skip_special_tokens=skip)
        assert detok.output_text == want
        assert "".join(deltas) == want
        assert all("\ufffd" not in d for d in deltas), deltas  # never a partial character


@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_decode_like_the_whole(hf_tokenizer, skip):
    rng = random.Random(1)
    vocab = len(hf_tokenizer)
    for _ in range(150):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
        # byte tokens (ids < 300 here) often leave characters unfinished, so draw them often
        ids = [rng.randrange(300 if rng.random() < 0.5 else vocab) for _ in range(rng.randint(1, 30))]
        detok, deltas, _ = _stream(hf_tokenizer, prompt, ids, skip_special_tokens=skip)
        want = hf_tokenizer.decode(ids, skip_special_tokens=skip)
        assert detok.output_text == want
        assert "".join(deltas) == want


@pytest.mark.parametrize("prompt", ["The capital of France is", CHAT_PROMPT, "naïve café 🎉"])
def test_first_tokens_decode_in_the_prompts_context(hf_tokenizer, prompt):
    prompt_ids = _encode(hf_tokenizer, prompt)
    out_ids = _encode(hf_tokenizer, " Paris, 東京 and  more.")
    detok, deltas, _ = _stream(hf_tokenizer, prompt_ids, out_ids)
    full = hf_tokenizer.decode(prompt_ids + out_ids, skip_special_tokens=True)
    want = full[len(hf_tokenizer.decode(prompt_ids, skip_special_tokens=True)) :]
    assert want.startswith(" Paris")
    assert detok.output_text == want == "".join(deltas)


def test_sentencepiece_style_leading_space_is_kept_from_the_prompts_context():
    """A Metaspace decoder drops the space of a sequence's first word; in context it must stay."""
    vocab = {"<unk>": 0, "\u2581Hello": 1, "\u2581world": 2, "!": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert tokenizer.decode([2, 3]) == "world!"
    detok, deltas, _ = _stream(tokenizer, [1], [2, 3])
    assert detok.output_text == "".join(deltas) == " world!"


def test_unfinished_character_is_held_back_until_complete_or_finished(hf_tokenizer):
    ids = _encode(hf_tokenizer, "🎉")
    assert len(ids) == 3
    detok = IncrementalDetokenizer(hf_tokenizer, [504], SamplingParams())
    for token in ids[:2]:
        detok.add_token(token)
        assert detok.take_delta(finished=False) == ""
    assert detok.output_text == hf_tokenizer.decode(ids[:2])  # ends in "\ufffd" while unfinished
    detok.add_token(ids[2])
    assert detok.take_delta(finished=False) == "🎉"
    cut = IncrementalDetokenizer(hf_tokenizer, [504], SamplingParams())
    cut.add_token(ids[0])
    assert cut.take_delta(finished=True) == hf_tokenizer.decode(ids[:1]) == cut.output_text


class _CountingTokenizer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.lengths = tokenizer, []

    def decode(self, ids, **kwargs) -> str:
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_each_step_decodes_only_a_few_tokens(hf_tokenizer):
    counting = _CountingTokenizer(hf_tokenizer)
    ids = _encode(hf_tokenizer, " ".join(TEXTS) * 8)
    assert len(ids) > 300
    detok, _, _ = _stream(counting, _encode(hf_tokenizer, CHAT_PROMPT), ids)
    assert detok.output_text == hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert max(counting.lengths) <= PROMPT_CONTEXT_TOKENS + 4  # an emoji spans at most 4 byte tokens
    assert len(counting.lengths) <= 2 * len(ids) + 1


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens_cuts_the_output(hf_tokenizer, include):
    pieces = ["The answer", " is 4", "2.\n", "\nEN", "D more", " text"]
    ids = [t for p in pieces for t in _encode(hf_tokenizer, p)]
    detok, deltas, stopped_at = _stream(
        hf_tokenizer, [504], ids, stop=["\n\nEND", "never"], include_stop_str_in_output=include
    )
    assert stopped_at == ids.index(_encode(hf_tokenizer, "D more")[0])
    assert detok.matched_stop == "\n\nEND"
    want = "The answer is 42." + ("\n\nEND" if include else "")
    assert detok.output_text == want == "".join(deltas)


def test_tail_that_may_start_a_stop_string_is_held_back(hf_tokenizer):
    detok = IncrementalDetokenizer(hf_tokenizer, [504], SamplingParams(stop=["STOP"]))
    steps = [("abc ST", "abc "), ("AR", "STAR"), (" S", " "), ("T", ""), ("OP", None)]
    for text, want_delta in steps:
        stopped = [detok.add_token(t) for t in _encode(hf_tokenizer, text)]
        if want_delta is None:
            assert stopped[-1]
        else:
            assert not any(stopped) and detok.take_delta(finished=False) == want_delta
    assert detok.take_delta(finished=True) == ""
    assert detok.output_text == "abc STAR "


@pytest.mark.parametrize("include", [False, True])
def test_random_stop_strings_cut_at_the_first_completed_match(hf_tokenizer, include):
    rng = random.Random(2)
    for _ in range(80):
        text = _random_text(rng) + _random_text(rng)
        stops = []
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(len(text))
            stops.append(text[start : start + rng.randint(1, 7)])
        ids = _encode(hf_tokenizer, text)
        detok, deltas, stopped_at = _stream(
            hf_tokenizer,
            [504],
            ids,
            stop=stops,
            include_stop_str_in_output=include,
            skip_special_tokens=False,
        )
        end, start, stop = min((text.find(s) + len(s), text.find(s), s) for s in stops)
        assert detok.output_text == text[: end if include else start] == "".join(deltas), (text, stops)
        assert detok.matched_stop == stop
        prefixes = (hf_tokenizer.decode(ids[: i + 1], skip_special_tokens=False) for i in range(len(ids)))
        assert stopped_at == next(i for i, p in enumerate(prefixes) if any(s in p for s in stops))
