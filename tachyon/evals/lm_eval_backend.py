"""lm-evaluation-harness model backend `tachyon`: the in-process engine behind the harness's three requests.

Importing this module registers the backend (lm-eval 0.4.x finds external models only through its registry;
it has no entry-point discovery), so after `import tachyon.evals.lm_eval_backend`:

    lm_eval.simple_evaluate(model="tachyon", model_args="pretrained=PATH,max_model_len=4096", tasks=[...])

`python -m tachyon.evals.lm_eval_cli ...` is lm-eval's own command line with the backend registered, and
`tachyon eval --task lm-eval:NAME` runs a harness task on the engine `tachyon eval` already built.

Tokenization follows the harness's HF backend (`TemplateLM._encode_pair`, the tokenizer's own special
tokens, left truncation to max_length), so scores are comparable with `--model hf` request by request.
"""

from __future__ import annotations

import logging

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

# Importing lm_eval.models (done by this import) registers the harness's own models before ours: its
# `get_model` imports them only while the registry is empty, so registering first would hide `hf`.
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from tachyon import LLM, SamplingParams
from tachyon.evals.eval_model import EngineModel
from tachyon.evals.results import TaskResult
from tachyon.evals.scoring import encode, score_tokens

logger = logging.getLogger(__name__)

MODEL_NAME = "tachyon"
_ENGINE_ARGS = {
    "tokenizer",
    "dtype",
    "max_model_len",
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_prefix_caching",
    "kv_cache_memory",
    "gpu_memory_utilization",
    "attention_backend",
    "seed",
    "deterministic",
}


@register_model(MODEL_NAME)
class TachyonLM(TemplateLM):
    """`pretrained`: HF folder, .gguf file or hub id (None: the default model); or `llm`: an engine already
    built. `max_length`: most tokens fed per request (default max_model_len - 2: a scored request of
    max_length + 1 tokens must leave the engine room for one output token). Other keyword arguments are
    engine flags (`dtype`, `max_model_len`, `kv_cache_memory`, ...); `batch_size` is accepted and ignored:
    the engine batches every request of a call by itself."""

    def __init__(
        self,
        pretrained: str | None = None,
        llm: LLM | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        device: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **engine_args,
    ) -> None:
        super().__init__()
        unknown = set(engine_args) - _ENGINE_ARGS
        if unknown:
            raise ValueError(f"unknown model_args for tachyon: {sorted(unknown)}; engine flags: {sorted(_ENGINE_ARGS)}")
        if llm is None:
            llm = LLM(pretrained, device=_engine_device(device), **engine_args)
        elif pretrained is not None or engine_args:
            raise ValueError("give either an engine (llm=...) or pretrained/engine flags, not both")
        self.llm = llm
        self.eval_model = EngineModel(llm)
        self.tokenizer = llm.get_tokenizer()
        self.pretrained = pretrained
        self._max_length = max_length or llm.engine.max_model_len - 2
        if self._max_length + 2 > llm.engine.max_model_len:
            raise ValueError(f"max_length {self._max_length} must be at most max_model_len - 2")
        self._max_gen_toks = max_gen_toks
        self._prefix_token_id = prefix_token_id

    # ---- what the harness reads -------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Context of an empty-context request and of the first rolling window: BOS, else EOS (as HF's)."""
        if self._prefix_token_id is not None:
            return self._prefix_token_id
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            return encode(self.tokenizer, string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def get_model_info(self) -> dict:
        return {"model_name": self.pretrained or "default", "backend": MODEL_NAME}

    # ---- the three request types ------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """`requests`: ((context, continuation) or None, context_ids, continuation_ids), all batched at once."""
        token_requests = [(context, continuation) for _, context, continuation in requests]
        scores = score_tokens(self.eval_model, token_requests, self.max_length, use_tqdm=not disable_tqdm)
        results = [(s.logprob, s.is_greedy) for s in scores]
        for (cache_key, _, _), result in zip(requests, results):
            if cache_key is not None:
                self.cache_hook.add_partial("loglikelihood", cache_key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text loglikelihood over disjoint windows of max_length tokens, the first one behind the
        prefix token (the harness's own window split, so every token is scored once)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            rolling = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(lm_utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Each request (context, gen_kwargs) on the engine; all are submitted at once, each with its own
        SamplingParams, so greedy and sampled requests share batches."""
        eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        prompts, params, stops = [], [], []
        for context, gen_kwargs in tqdm(
            [req.args for req in requests], desc="Preparing generate_until", disable=disable_tqdm
        ):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self._max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise ValueError(f"max_gen_toks {max_gen_toks} must be less than max_length {self.max_length}")
            prompts.append(self.tok_encode(context)[-max_ctx_len:])
            params.append(_sampling_params(kwargs, until, max_gen_toks))
            stops.append(until)
        outputs = self.llm.generate(prompts, params, use_tqdm=not disable_tqdm) if prompts else []
        texts = [postprocess_generated_text(o.outputs[0].text, s, None) for o, s in zip(outputs, stops)]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


def _engine_device(device: str | None) -> str:
    """The harness's --device defaults to cuda:0; like its HF backend, fall back to auto without CUDA."""
    import torch

    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        return "auto"
    return device


def _sampling_params(kwargs: dict, until: list[str], max_gen_toks: int) -> SamplingParams:
    """Harness gen_kwargs (after normalisation: do_sample, temperature, top_p, top_k, seed) as SamplingParams."""
    do_sample, temperature = kwargs.pop("do_sample", False), float(kwargs.pop("temperature", 0.0) or 0.0)
    params = SamplingParams(
        max_tokens=max_gen_toks,
        temperature=temperature if do_sample else 0.0,
        top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
        top_k=int(kwargs.pop("top_k", 0) or 0),
        seed=kwargs.pop("seed", None),
        stop=[s for s in until if s],
    )
    if kwargs:
        logger.warning("tachyon ignores generation kwargs %s", sorted(kwargs))
    return params


def evaluate_harness_task(llm: LLM, name: str, limit: int | None = None, task_manager=None) -> list[TaskResult]:
    """Run harness task (or group) `name` on `llm` through `lm_eval.simple_evaluate`; one TaskResult per
    task the harness reports, with its metrics under their harness names (`acc`, `acc_norm`,
    `word_perplexity`, ...; a filter other than `none` stays in the name: `exact_match,strict-match`)."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model=TachyonLM(llm=llm), tasks=[name], limit=limit, task_manager=task_manager, bootstrap_iters=0
    )
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for {name}")
    out = []
    for task, values in results["results"].items():
        metrics = {
            key.removesuffix(",none"): float(value)
            for key, value in values.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))
        }
        higher = results.get("higher_is_better", {}).get(task, {})
        n = results.get("n-samples", {}).get(task, {}).get("effective", 0)
        higher_is_better = {m: bool(higher.get(m.split(",")[0], True)) for m in metrics}
        info = {"lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "n_shot": results["n-shot"].get(task)}
        out.append(TaskResult(task, "lm_eval", metrics, higher_is_better, n, info))
    return out
