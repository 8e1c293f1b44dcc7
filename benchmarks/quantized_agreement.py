"""How closely Tachyon runs compressed-tensors checkpoints, against HF transformers on the same folder.

For each checkpoint: greedy tokens of Tachyon vs HF (16 prompts, --new-tokens each), the same for HF with
sdpa vs HF with eager attention (the agreement two correct implementations reach: rounding activations
to 8 bits turns float-level differences into whole quantization steps), and perplexity on a held-out
slice of real English text (gensim's lee.cor; calibration uses lee_background.cor) by both.

    python benchmarks/quantized_agreement.py CHECKPOINT [CHECKPOINT ...] [--corpus lee.cor]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tachyon import LLM, SamplingParams  # noqa: E402
from tests.data.prompts import PROMPTS  # noqa: E402
from tests.reference import hf_greedy  # noqa: E402


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    return sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(p) for p in a)


def hf_perplexity(model, ids: list[int]) -> float:
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return math.exp(-logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="HF folders (compressed-tensors or dense)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--corpus", default=None, help="text file for perplexity (default: the first prompts)")
    parser.add_argument("--ppl-tokens", type=int, default=1024, help="tokens of the corpus scored, one window")
    args = parser.parse_args()
    prompts = PROMPTS[:16]
    text = open(args.corpus, encoding="utf-8", errors="replace").read() if args.corpus else " ".join(PROMPTS)
    print("| checkpoint | Tachyon vs HF greedy | HF sdpa vs HF eager greedy | perplexity Tachyon / HF |")
    print("|---|---|---|---|")
    for folder in args.checkpoints:
        llm = LLM(folder, max_model_len=2048)
        params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
        outs = llm.generate(prompts, params)
        ids = [o.prompt_token_ids for o in outs]
        ours = [o.outputs[0].token_ids for o in outs]
        sdpa = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
        eager = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        hf = [hf_greedy(sdpa, p, args.new_tokens) for p in ids]
        hf_eager = [hf_greedy(eager, p, args.new_tokens) for p in ids]
        tokens = llm.get_tokenizer()(text)["input_ids"][: args.ppl_tokens]
        scored = llm.generate([tokens], SamplingParams(max_tokens=1, prompt_logprobs=0))[0].prompt_logprobs
        ours_ppl = math.exp(-sum(scored[t][tokens[t]].logprob for t in range(1, len(tokens))) / (len(tokens) - 1))
        print(
            f"| {os.path.basename(folder.rstrip('/'))} | {agreement(ours, hf):.1%} | {agreement(hf_eager, hf):.1%} "
            f"| {ours_ppl:.3f} / {hf_perplexity(sdpa, tokens):.3f} |",
            flush=True,
        )
        del llm


if __name__ == "__main__":
    main()
