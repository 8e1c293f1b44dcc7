"""POST /v1/chat/completions: messages through the chat template (the tokenizer's, or
--chat-template), then the same engine path as completions; chat-shaped logprobs and stream chunks
(the first one per choice carries `role: assistant`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError

from tachyon.engine.outputs import CompletionOutput, RequestOutput
from tachyon.server.errors import APIError
from tachyon.server.generation import (
    SSE_DONE,
    ServerContext,
    ShutdownAbort,
    final_outputs,
    first_then_rest,
    merge_streams,
    sse,
    sse_error,
    with_kv_params,
)
from tachyon.server.logprobs import chat_logprobs
from tachyon.server.protocol import ChatCompletionRequest, ChatMessage


def render_chat(ctx: ServerContext, messages: list[ChatMessage], template: str | None, add_generation_prompt: bool):
    """Token ids of a conversation; a template that fails on these messages is the client's 400."""
    try:
        text = ctx.tokenizer.apply_chat_template(
            [m.for_template() for m in messages],
            chat_template=template or ctx.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        raise APIError(f"cannot apply the chat template to these messages: {e}", 400, "messages") from e
    return ctx.tokenizer.encode(text, add_special_tokens=False)


async def create_chat_completion(ctx: ServerContext, req: ChatCompletionRequest, raw_request: Request):
    ctx.check_model(req.model)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise APIError(f"max_tokens must be at least 1, got {max_tokens}", 400, "max_tokens")
    if req.top_logprobs and not req.logprobs:
        raise APIError("top_logprobs needs logprobs=true", 400, "top_logprobs")
    prompt_ids = await asyncio.to_thread(render_chat, ctx, req.messages, req.chat_template, req.add_generation_prompt)
    ctx.check_prompt_len(len(prompt_ids), max_tokens)
    params = req.sampling_params(max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
    ctx.check_capacity()
    await ctx.fetch_prompt_kv(req.kv_transfer_params, [prompt_ids])
    request_id, streams, kv_params = ctx.start([prompt_ids], params, "chatcmpl", req.priority, req.kv_transfer_params)
    view = _ChatView(ctx, req, len(prompt_ids), request_id)
    if req.stream:
        events = await first_then_rest(merge_streams(streams, ctx.aborted), raw_request)
        return StreamingResponse(view.stream(events), media_type="text/event-stream")
    (final,) = await final_outputs(streams, raw_request, ctx.aborted)
    return JSONResponse(with_kv_params(view.response(final), kv_params))


@dataclass
class _ChatView:
    ctx: ServerContext
    req: ChatCompletionRequest
    num_prompt_tokens: int
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))

    def response(self, out: RequestOutput) -> dict:
        choices = [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": self._logprobs(c.token_ids, c.logprobs),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            for c in out.outputs
        ]
        num_completion = sum(len(c.token_ids) for c in out.outputs)
        return {**self._header("chat.completion"), "choices": choices, "usage": self._usage(num_completion)}

    async def stream(self, events: AsyncIterator[tuple[int, RequestOutput]]) -> AsyncIterator[str]:
        for j in range(self.req.n):
            role = {"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            yield sse({**self._header(), "choices": [role]})
        num_sent = [0] * self.req.n
        done = [False] * self.req.n
        try:
            async for _, out in events:
                choices = [self._delta(c, num_sent, done) for c in out.outputs]
                choices = [c for c in choices if c is not None]
                if choices:
                    yield sse({**self._header(), "choices": choices})
        except ShutdownAbort:  # the shutdown grace period is over: the unfinished choices end as "abort"
            unfinished = [j for j in range(self.req.n) if not done[j]]
            if unfinished:
                yield sse({**self._header(), "choices": [self._abort_choice(j) for j in unfinished]})
        except Exception as e:  # a failure mid-stream still reaches the client in OpenAI's shape
            yield sse_error(e)
            yield SSE_DONE
            return
        if self.req.include_usage_in_stream:
            yield sse({**self._header(), "choices": [], "usage": self._usage(sum(num_sent))})
        yield SSE_DONE

    @staticmethod
    def _abort_choice(index: int) -> dict:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": "abort", "stop_reason": None}

    def _delta(self, c: CompletionOutput, num_sent: list[int], done: list[bool]) -> dict | None:
        j = c.index
        if done[j]:
            return None
        new_ids = c.token_ids[num_sent[j] :]
        new_positions = (c.logprobs or [])[num_sent[j] :] if c.logprobs is not None else None
        num_sent[j] = len(c.token_ids)
        done[j] = c.finish_reason is not None
        if not c.delta_text and not new_ids and not done[j]:
            return None
        return {
            "index": j,
            "delta": {"content": c.delta_text} if c.delta_text or not done[j] else {},
            "logprobs": self._logprobs(new_ids, new_positions),
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason if done[j] else None,
        }

    def _logprobs(self, token_ids: list[int], positions) -> dict | None:
        if not self.req.logprobs or positions is None:
            return None
        return {"content": chat_logprobs(self.ctx.tokenizer, token_ids, positions, self.req.top_logprobs or 0)}

    def _header(self, kind: str = "chat.completion.chunk") -> dict:
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.ctx.model_name}

    def _usage(self, num_completion: int) -> dict:
        n = self.num_prompt_tokens
        return {"prompt_tokens": n, "completion_tokens": num_completion, "total_tokens": n + num_completion}
