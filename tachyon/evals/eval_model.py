"""The model an evaluation runs on: the in-process engine (`EngineModel`) or an OpenAI-compatible server
(`ServerModel`, server_model.py). Scoring, perplexity and custom tasks see only this small interface, so
every metric is computed the same way in both places; `open_model` turns a `tachyon eval` model spec into one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from tachyon import SamplingParams

if TYPE_CHECKING:
    from tachyon import LLM
    from tachyon.config import EngineConfig

URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum of log p over the scored tokens
    is_greedy: bool  # every scored token is the argmax at its position


class EvalModel(Protocol):
    max_model_len: int

    def get_tokenizer(self): ...

    def score(
        self, prompts: Sequence[list[int]], num_scored: Sequence[int], use_tqdm: bool = False
    ) -> list[Loglikelihood]:
        """Loglikelihood of the last num_scored[i] tokens of prompts[i], each given the tokens before it."""
        ...

    def generate_greedy(
        self, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[str], use_tqdm: bool = False
    ) -> list[str]:
        """Greedy continuation text of each prompt, stopped at the first stop string."""
        ...


class EngineModel:
    """`LLM` behind the interface: a loglikelihood is read from `prompt_logprobs` of a max_tokens=1
    request, where entry i is log p(token i | tokens < i) with its rank; all prompts go in one
    `generate` call so the scheduler batches them."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.max_model_len = llm.engine.max_model_len

    def get_tokenizer(self):
        return self.llm.get_tokenizer()

    def score(
        self, prompts: Sequence[list[int]], num_scored: Sequence[int], use_tqdm: bool = False
    ) -> list[Loglikelihood]:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(list(prompts), params, use_tqdm=use_tqdm) if prompts else []
        results = []
        for prompt, n, out in zip(prompts, num_scored, outputs):
            picked = [out.prompt_logprobs[p][prompt[p]] for p in range(len(prompt) - n, len(prompt))]
            results.append(Loglikelihood(sum(lp.logprob for lp in picked), all(lp.rank == 1 for lp in picked)))
        return results

    def generate_greedy(
        self, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[str], use_tqdm: bool = False
    ) -> list[str]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=[s for s in stop if s])
        return [out.outputs[0].text for out in self.llm.generate(list(prompts), params, use_tqdm=use_tqdm)]


def as_eval_model(model: LLM | EvalModel) -> EvalModel:
    """Library calls accept an `LLM` as well as an `EvalModel`."""
    from tachyon import LLM

    return EngineModel(model) if isinstance(model, LLM) else model


def is_url(spec: str | None) -> bool:
    return spec is not None and spec.startswith(URL_PREFIXES)


def open_model(spec: str | None, config: EngineConfig) -> EvalModel:
    """A server for an http(s) URL, else an engine on `config` with `spec` as its model (None: default)."""
    if is_url(spec):
        from tachyon.evals.server_model import ServerModel

        return ServerModel(spec)
    from tachyon import LLM

    return EngineModel(LLM(**vars(replace(config, model=spec))))
