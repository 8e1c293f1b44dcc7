"""Speculative decoding against plain decoding, in one process on the same machine: tokens/s of a single
stream on input-grounded tasks (edit and summarize a news article from lee.cor), acceptance, and
throughput at high concurrency, where the engine's controller must turn speculation down.

    .venv/bin/python benchmarks/spec_decode.py [--model M] [--num-prompts 6] [--max-tokens 128]
                                               [--concurrency 64] [--skip-load]

Every speculative run must produce the plain run's greedy tokens exactly; the script counts mismatches.
The draft model is the default model's first 8 layers saved as a model of its own (its own KV cache), as
SmolLM2 has no smaller sibling; self-speculation runs the same layers inside the target.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from tachyon import LLM, SamplingParams
from tachyon.corpus import read_corpus
from tachyon.models.convert import save_first_layers

TASKS = {
    "edit": "Rewrite the following text, fixing any spelling or grammar mistakes. Keep everything else the same.\n\n{}",
    "summarize": "Summarize the following article in a few sentences.\n\n{}",
}


def articles(num: int, max_words: int = 120) -> list[str]:
    docs = [d for d in read_corpus() if len(d.split()) >= 60]
    return [" ".join(d.split()[:max_words]) for d in docs[:num]]


def single_stream(llm: LLM, conversations, max_tokens: int) -> tuple[float, list[list[int]]]:
    """tokens/s over the conversations one at a time, and the tokens."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    llm.chat(conversations[0], params)  # warm-up
    tokens, seconds, outputs = 0, 0.0, []
    for conv in conversations:
        start = time.perf_counter()
        out = llm.chat(conv, params)[0].outputs[0]
        seconds += time.perf_counter() - start
        tokens += len(out.token_ids)
        outputs.append(out.token_ids)
    return tokens / seconds, outputs


def under_load(llm: LLM, conversations, max_tokens: int) -> float:
    """Generated tokens/s with every conversation submitted at once."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.chat(conversations, params)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def spec_summary(llm: LLM) -> str:
    s = llm.engine.stats().spec_decode
    if s is None or not s.num_draft_tokens:
        return "-"
    return f"{s.acceptance_rate:.0%} / {s.mean_accepted_length:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="target model (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--num-prompts", type=int, default=6, help="articles per task for the single-stream runs")
    ap.add_argument("--max-tokens", type=int, default=128, help="output tokens per single-stream request")
    ap.add_argument("--concurrency", type=int, default=64, help="requests submitted at once in the load run")
    ap.add_argument("--load-max-tokens", type=int, default=48, help="output tokens per request in the load run")
    ap.add_argument("--draft-layers", type=int, default=8, help="layers of the self-speculation and draft models")
    ap.add_argument("--skip-load", action="store_true", help="only the single-stream runs")
    ap.add_argument("--only", default=None, help="single-stream runs: plain and the methods whose name has this text")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="spec-bench-")
    draft = save_first_layers(args.model, args.draft_layers, os.path.join(tmp, f"draft-{args.draft_layers}"))
    methods = {
        "plain": None,
        "ngram k=5": {"method": "ngram", "num_speculative_tokens": 5},
        "ngram k=8": {"method": "ngram", "num_speculative_tokens": 8},
        f"self_spec {args.draft_layers} layers k=3": {
            "method": "self_spec",
            "num_speculative_tokens": 3,
            "num_draft_layers": args.draft_layers,
        },
        "self_spec 24 layers k=3": {"method": "self_spec", "num_speculative_tokens": 3, "num_draft_layers": 24},
        "self_spec 24 layers k=3, adaptive off": {
            "method": "self_spec",
            "num_speculative_tokens": 3,
            "num_draft_layers": 24,
            "adaptive": False,
        },
        f"draft model ({args.draft_layers} layers) k=3": {
            "method": "draft_model",
            "model": draft,
            "num_speculative_tokens": 3,
        },
    }
    methods = {n: m for n, m in methods.items() if m is None or not args.only or args.only in n}
    docs = articles(args.num_prompts)
    rows = []
    for task, template in TASKS.items():
        conversations = [[{"role": "user", "content": template.format(d)}] for d in docs]
        baseline_rate, baseline_tokens = None, None
        for name, spec in methods.items():
            llm = LLM(args.model, speculative_config=spec)
            rate, tokens = single_stream(llm, conversations, args.max_tokens)
            if baseline_rate is None:
                baseline_rate, baseline_tokens = rate, tokens
            mismatches = sum(a != b for a, b in zip(tokens, baseline_tokens))
            rows.append((task, name, rate, rate / baseline_rate, spec_summary(llm), mismatches))
            print(f"{task:9s} {name:32s} {rate:7.1f} tok/s  x{rate / baseline_rate:.2f}  {rows[-1][4]}", flush=True)
            del llm

    print("\n| task | method | tokens/s | vs plain | acceptance / mean accepted length | outputs differing |")
    print("|---|---|---|---|---|---|")
    for task, name, rate, ratio, acc, mism in rows:
        print(f"| {task} | {name} | {rate:.1f} | {ratio:.2f}x | {acc} | {mism}/{len(docs)} |")

    if args.skip_load:
        return
    load_docs = articles(args.concurrency, max_words=60)
    load = {
        "plain": None,
        "ngram k=5": {"method": "ngram", "num_speculative_tokens": 5},
        "ngram k=5, adaptive off": {"method": "ngram", "num_speculative_tokens": 5, "adaptive": False},
        f"self_spec {args.draft_layers} layers k=3": methods[f"self_spec {args.draft_layers} layers k=3"],
    }
    print(
        f"\n| task | {args.concurrency} concurrent requests | tokens/s | vs plain | acceptance / mean accepted length |"
    )
    print("|---|---|---|---|---|")
    for task, template in TASKS.items():
        load_convs = [[{"role": "user", "content": template.format(d)}] for d in load_docs]
        plain_rate = None
        for name, spec in load.items():
            llm = LLM(args.model, speculative_config=spec, max_num_seqs=args.concurrency)
            under_load(llm, load_convs[:2], 4)  # warm-up
            rate = under_load(llm, load_convs, args.load_max_tokens)
            plain_rate = plain_rate or rate
            print(f"| {task} | {name} | {rate:.1f} | {rate / plain_rate:.2f}x | {spec_summary(llm)} |", flush=True)
            del llm


if __name__ == "__main__":
    main()
