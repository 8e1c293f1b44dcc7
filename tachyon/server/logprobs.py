"""Engine logprobs (per position: token id -> Logprob, the chosen token first) in OpenAI's two
shapes: the legacy completions block (tokens, token_logprobs, top_logprobs, text_offset) and the
chat `content` list of {token, logprob, bytes, top_logprobs}."""

from __future__ import annotations

from tachyon.engine.outputs import PositionLogprobs

MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _value(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def legacy_logprobs(
    tokenizer, token_ids: list[int], positions: list[PositionLogprobs | None], text_offset: int = 0
) -> dict:
    """`positions[k]` scores `token_ids[k]`; None (the first prompt token) gives null entries."""
    block: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, position in zip(token_ids, positions):
        text = token_text(tokenizer, token_id)
        block["tokens"].append(text)
        block["text_offset"].append(text_offset)
        text_offset += len(text)
        if position is None:
            block["token_logprobs"].append(None)
            block["top_logprobs"].append(None)
            continue
        block["token_logprobs"].append(_value(position[token_id].logprob))
        block["top_logprobs"].append({token_text(tokenizer, t): _value(lp.logprob) for t, lp in position.items()})
    return block


def chat_logprobs(tokenizer, token_ids: list[int], positions: list[PositionLogprobs], num_top: int) -> list[dict]:
    content = []
    for token_id, position in zip(token_ids, positions):
        top = sorted(position.items(), key=lambda item: item[1].rank)[:num_top] if num_top else []
        content.append(
            {
                **_chat_entry(tokenizer, token_id, position[token_id].logprob),
                "top_logprobs": [_chat_entry(tokenizer, t, lp.logprob) for t, lp in top],
            }
        )
    return content


def _chat_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode("utf-8"))}
