"""Offline throughput of one model on the engine: a fixed batch of prompts (token slices of the corpus'
calibration slice, so never the evaluation text), each generating exactly `output_tokens` greedy tokens,
submitted in one `LLM.generate` call. `tachyon validate` calls `offline_throughput` on the engine it
evaluated with; the report reproduces the figure with

    python -m tachyon.validate.throughput [MODEL] --num-prompts 16 --prompt-tokens 128 --output-tokens 32
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tachyon import SamplingParams
from tachyon.corpus import calibration_documents

if TYPE_CHECKING:
    from tachyon import LLM


@dataclass(frozen=True)
class ThroughputResult:
    num_prompts: int
    prompt_tokens: int  # per prompt
    output_tokens: int  # per prompt
    seconds: float
    output_throughput: float  # generated tokens / s
    total_token_throughput: float  # (prompt + generated) tokens / s
    request_throughput: float  # prompts / s


def corpus_prompts(tokenizer, num_prompts: int, prompt_tokens: int) -> list[list[int]]:
    """Consecutive, disjoint slices of the calibration text (cycled if it runs out), so no prompt shares a
    prefix with another and prefix caching does not flatter the figure."""
    pool = tokenizer.encode("\n\n".join(calibration_documents()), add_special_tokens=False)
    if len(pool) < prompt_tokens:
        raise ValueError(f"--prompt-tokens {prompt_tokens} exceeds the corpus ({len(pool)} tokens)")
    per_pass = len(pool) // prompt_tokens
    return [pool[(i % per_pass) * prompt_tokens : (i % per_pass + 1) * prompt_tokens] for i in range(num_prompts)]


def offline_throughput(llm: LLM, num_prompts: int, prompt_tokens: int, output_tokens: int) -> ThroughputResult:
    prompts = corpus_prompts(llm.get_tokenizer(), num_prompts, prompt_tokens)
    llm.generate(prompts[:1], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up, outside the timing
    params = SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return ThroughputResult(
        num_prompts=num_prompts,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        seconds=seconds,
        output_throughput=generated / seconds,
        total_token_throughput=(generated + num_prompts * prompt_tokens) / seconds,
        request_throughput=num_prompts / seconds,
    )


def main(argv: list[str] | None = None) -> int:
    from tachyon import LLM
    from tachyon.entrypoints.engine_args import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser(prog="python -m tachyon.validate.throughput", description=__doc__)
    add_engine_args(parser)
    parser.add_argument("--num-prompts", type=int, default=16, help="prompts in the one generate call")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--output-tokens", type=int, default=32, help="tokens generated per prompt (ignore_eos)")
    args = parser.parse_args(argv)
    llm = LLM(**vars(engine_config_from_args(args)))
    result = offline_throughput(llm, args.num_prompts, args.prompt_tokens, args.output_tokens)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
