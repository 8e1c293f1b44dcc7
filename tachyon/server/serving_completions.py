"""POST /v1/completions: prompts (text, token ids, or lists of either) × n samples, streamed as SSE
or returned whole, with OpenAI's legacy logprobs and vLLM's `echo` (max_tokens=0 with echo
returns only the prompt and its logprobs, the lm-evaluation-harness scoring call)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

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
from tachyon.server.logprobs import legacy_logprobs
from tachyon.server.protocol import CompletionRequest


@dataclass
class _Prompt:
    text: str
    token_ids: list[int]


def tokenize_prompts(tokenizer, prompt) -> list[_Prompt]:
    """str | list[str] | list[int] | list[list[int]] -> one _Prompt per prompt."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError("prompt must not be empty", 400, "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append(_Prompt(p, tokenizer.encode(p, add_special_tokens=True)))
        else:
            out.append(_Prompt(tokenizer.decode(p), list(p)))
    return out


async def create_completion(ctx: ServerContext, req: CompletionRequest, raw_request: Request):
    ctx.check_model(req.model)
    if req.max_tokens is not None and req.max_tokens < (0 if req.echo else 1):
        raise APIError(f"max_tokens must be at least {0 if req.echo else 1}, got {req.max_tokens}", 400, "max_tokens")
    echo_only = req.echo and req.max_tokens == 0
    max_tokens = 1 if echo_only else req.max_tokens  # echo-only still runs one step; its token is dropped
    prompts = await asyncio.to_thread(tokenize_prompts, ctx.tokenizer, req.prompt)
    for i, p in enumerate(prompts):
        ctx.check_prompt_len(len(p.token_ids), max_tokens, i)
    prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
    params = req.sampling_params(max_tokens, None if echo_only else req.logprobs, prompt_logprobs)
    ctx.check_capacity()
    token_ids = [p.token_ids for p in prompts]
    await ctx.fetch_prompt_kv(req.kv_transfer_params, token_ids)
    request_id, streams, kv_params = ctx.start(token_ids, params, "cmpl", req.priority, req.kv_transfer_params)
    view = _CompletionView(ctx, req, prompts, request_id, echo_only)
    if req.stream:
        events = await first_then_rest(merge_streams(streams, ctx.aborted), raw_request)
        return StreamingResponse(view.stream(events), media_type="text/event-stream")
    finals = await final_outputs(streams, raw_request, ctx.aborted)
    return JSONResponse(with_kv_params(view.response(finals), kv_params))


@dataclass
class _ChoiceState:
    num_sent_tokens: int = 0
    text_offset: int = 0
    echoed: bool = False
    finished: bool = False


@dataclass
class _CompletionView:
    """Turns engine outputs into completion responses and stream chunks."""

    ctx: ServerContext
    req: CompletionRequest
    prompts: list[_Prompt]
    request_id: str
    echo_only: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def response(self, finals: list[RequestOutput]) -> dict:
        n = self.req.n
        choices = [
            self._whole_choice(i * n + c.index, self.prompts[i], out, c)
            for i, out in enumerate(finals)
            for c in out.outputs
        ]
        num_completion = 0 if self.echo_only else sum(len(c.token_ids) for out in finals for c in out.outputs)
        return {**self._header(), "choices": choices, "usage": self._usage(num_completion)}

    def _whole_choice(self, index: int, prompt: _Prompt, out: RequestOutput, c: CompletionOutput) -> dict:
        text, token_ids = ("", []) if self.echo_only else (c.text, c.token_ids)
        positions = [] if self.echo_only else (c.logprobs or [])
        if self.req.echo:
            text = prompt.text + text
            token_ids = prompt.token_ids + token_ids
            positions = (out.prompt_logprobs or []) + positions
        logprobs = None
        if self.req.logprobs is not None:
            logprobs = legacy_logprobs(self.ctx.tokenizer, token_ids, positions)
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": "length" if self.echo_only else c.finish_reason,
            "stop_reason": None if self.echo_only else c.stop_reason,
        }

    async def stream(self, events: AsyncIterator[tuple[int, RequestOutput]]) -> AsyncIterator[str]:
        states: dict[int, _ChoiceState] = {}
        num_completion = 0
        try:
            async for i, out in events:
                chunk_choices = []
                for c in out.outputs:
                    index = i * self.req.n + c.index
                    state = states.setdefault(index, _ChoiceState())
                    before = state.num_sent_tokens
                    choice = self._delta_choice(index, self.prompts[i], out, c, state)
                    num_completion += 0 if self.echo_only else state.num_sent_tokens - before
                    if choice is not None:
                        chunk_choices.append(choice)
                if chunk_choices:
                    yield sse({**self._header(), "choices": chunk_choices})
        except ShutdownAbort:  # the shutdown grace period is over: the unfinished choices end as "abort"
            num_choices = len(self.prompts) * self.req.n
            unfinished = [i for i in range(num_choices) if not states.get(i, _ChoiceState()).finished]
            if unfinished:
                yield sse({**self._header(), "choices": [self._abort_choice(i) for i in unfinished]})
        except Exception as e:  # a failure mid-stream still reaches the client in OpenAI's shape
            yield sse_error(e)
            yield SSE_DONE
            return
        if self.req.include_usage_in_stream:
            yield sse({**self._header(), "choices": [], "usage": self._usage(num_completion)})
        yield SSE_DONE

    @staticmethod
    def _abort_choice(index: int) -> dict:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": "abort", "stop_reason": None}

    def _delta_choice(self, index: int, prompt: _Prompt, out: RequestOutput, c: CompletionOutput, state: _ChoiceState):
        if state.finished:
            return None
        text, token_ids, positions = "", [], []
        if self.req.echo and not state.echoed:
            if not c.token_ids and c.finish_reason is None:
                return None  # prefill chunks still running: the prompt logprobs are not all there yet
            text, token_ids, positions = prompt.text, list(prompt.token_ids), list(out.prompt_logprobs or [])
            state.echoed = True
        if not self.echo_only:
            text += c.delta_text
            token_ids += c.token_ids[state.num_sent_tokens :]
            positions += (c.logprobs or [])[state.num_sent_tokens :]
            state.num_sent_tokens = len(c.token_ids)
        finish_reason = "length" if self.echo_only else c.finish_reason
        state.finished = finish_reason is not None
        if not text and not token_ids and not state.finished:
            return None
        logprobs = None
        if self.req.logprobs is not None:
            logprobs = legacy_logprobs(self.ctx.tokenizer, token_ids, positions, state.text_offset)
        state.text_offset += len(text)
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "stop_reason": None if self.echo_only else c.stop_reason,
        }

    def _header(self) -> dict:
        return {
            "id": self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.model_name,
        }

    def _usage(self, num_completion: int) -> dict:
        num_prompt = sum(len(p.token_ids) for p in self.prompts)
        return {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion,
        }
