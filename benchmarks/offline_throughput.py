"""Offline throughput: the same workload through Tachyon and HF transformers `generate` in one run.

Workload (issue #2): 64 prompts of 32-256 tokens, 128 output tokens each, ignore_eos, greedy.
HF runs static batches with left padding, on the same dense weights (a GGUF is converted first).
Both models stay loaded for all rounds (on a GPU, HF gets what --gpu-memory-utilization leaves).
Prints output tokens/s for both, the ratio, and how often the two agree on greedy tokens (a rate:
bf16 is not bit-exact).

    python benchmarks/offline_throughput.py [--model PATH] [--hf-batch-size 64] [--dtype auto] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time

import torch


def prompt_pool(tokenizer) -> list[int]:
    """Real English text to cut prompts from: the 300 Lee news articles, ≈ 76k tokens. Long enough that two
    prompts almost never start at the same token, so the prefix cache, which HF does not have, finds
    nothing to reuse (each round prints its hits)."""
    from tachyon.corpus import read_corpus

    return tokenizer.encode("\n\n".join(read_corpus("lee_background")), add_special_tokens=False)


def make_prompts(pool: list[int], num: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    """`num` slices of `pool` with uniformly drawn token lengths."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(num):
        n = rng.randint(min_len, max_len)
        start = rng.randrange(0, len(pool) - n)
        prompts.append(pool[start : start + n])
    return prompts


def load_tachyon(args):
    from tachyon import LLM, SamplingParams

    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=args.num_prompts, deterministic=args.deterministic)
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    return llm


def run_tachyon(llm, prompts, output_len: int) -> tuple[list[list[int]], float]:
    from tachyon import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=True)
    return [o.outputs[0].token_ids for o in outs], time.perf_counter() - start


def load_hf(args, dtype: torch.dtype, device: torch.device):
    """HF transformers on the same dense weights, warmed up as Tachyon is, and its pad id."""
    from transformers import AutoModelForCausalLM

    from tachyon.models.convert import convert_gguf
    from tachyon.models.loader import load_model_source

    source = load_model_source(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = source.path
        if folder.endswith(".gguf"):
            # the dequantized weights as a plain HF folder: transformers would otherwise keep a GGUF's weights
            # packed and dequantize them inside every matmul, which is not the dense model Tachyon runs
            folder = convert_gguf(folder, os.path.join(tmp, "model"))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    pad = source.tokenizer.pad_token_id if source.tokenizer.pad_token_id is not None else 0
    with torch.no_grad():  # the warm-up: thread pools, allocator, kernels picked for the first shapes
        model.generate(input_ids=torch.tensor([[1, 2, 3]], device=device), max_new_tokens=4, pad_token_id=pad)
    return model, pad


def run_hf(model, pad: int, prompts, args) -> tuple[list[list[int]], float]:
    device = model.device
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), args.hf_batch_size):
        batch = prompts[i : i + args.hf_batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.output_len,
                min_new_tokens=args.output_len,
                do_sample=False,
                pad_token_id=pad,
            )
        outputs += gen[:, width:].tolist()
        print(f"  HF batch {i // args.hf_batch_size + 1}: {len(outputs)}/{len(prompts)} done", flush=True)
    return outputs, time.perf_counter() - start


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(fraction of identical sequences, mean fraction of tokens before the first divergence)."""
    same, prefix = 0, 0.0
    for x, y in zip(a, b):
        same += x == y
        n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        prefix += n / max(len(x), 1)
    return same / len(a), prefix / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: the embedded SmolLM2-135M)")
    parser.add_argument("--dtype", default="auto", help="engine dtype; HF runs the same")
    parser.add_argument("--num-prompts", type=int, default=64, help="prompts per round, all submitted at once")
    parser.add_argument("--min-input", type=int, default=32, help="shortest prompt, tokens")
    parser.add_argument("--max-input", type=int, default=256, help="longest prompt, tokens (lengths uniform between)")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens per prompt (EOS ignored)")
    parser.add_argument("--hf-batch-size", type=int, default=64, help="HF static batch size (left padded)")
    parser.add_argument("--skip-hf", action="store_true", help="only run Tachyon")
    parser.add_argument("--deterministic", action="store_true", help="Tachyon in batch-invariant mode (its cost)")
    parser.add_argument("--seed", type=int, default=0, help="prompts of round r are drawn with seed + r")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of Tachyon then HF, each on its own prompts, both models loaded once; prints every "
        "round and the median ratio (a shared machine's speed drifts between runs)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from tachyon.models.loader import load_model_source

    pool = prompt_pool(load_model_source(args.model).tokenizer)
    llm = load_tachyon(args)
    dtype, device = llm.engine.runner.dtype, llm.engine.runner.device
    hw = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{os.cpu_count()} cores"
    )
    print(
        f"\nmachine: {hw}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"dtype {dtype}{'; batch-invariant mode' if args.deterministic else ''}"
    )
    print(
        f"workload: {args.num_prompts} prompts of {args.min_input}-{args.max_input} tokens, {args.output_len} out each"
    )
    num_out = args.num_prompts * args.output_len
    hf = None if args.skip_hf else load_hf(args, dtype, device)
    ratios = []
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1} of {args.rounds}")
        prompts = make_prompts(pool, args.num_prompts, args.min_input, args.max_input, args.seed + r)
        hits = llm.engine.stats().prefix_cache_hits
        ours, t_ours = run_tachyon(llm, prompts, args.output_len)
        hits = llm.engine.stats().prefix_cache_hits - hits
        print(
            f"tachyon: {num_out / t_ours:8.1f} output tok/s  ({t_ours:.1f} s; prefix cache hits: {hits} of "
            f"{sum(map(len, prompts))} prompt tokens)"
        )
        if hf is None:
            continue
        theirs, t_hf = run_hf(*hf, prompts, args)
        print(f"hf:      {num_out / t_hf:8.1f} output tok/s  ({t_hf:.1f} s, static batches of {args.hf_batch_size})")
        ratios.append(t_hf / t_ours)
        print(f"ratio:   {ratios[-1]:.2f}x")
        seq_rate, prefix_rate = agreement(ours, theirs)
        print(
            f"greedy agreement: {seq_rate:.1%} of sequences identical; "
            f"{prefix_rate:.1%} of tokens before first divergence"
        )
    if len(ratios) > 1:
        print(
            f"ratio over {len(ratios)} rounds: median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
        )


if __name__ == "__main__":
    main()
