"""GPU performance against the hardware limit (issue #11), with random weights of real model shapes.

Measures the device's two ceilings first (copy bandwidth, bf16 matmul rate), then:
  1. decode tokens/s of a Llama-3.1-8B-shaped bf16 model at batch 1 (and 8, 64), CUDA graphs vs eager;
     batch 1 as a fraction of the roofline = bandwidth / bytes read per step (weights + live KV);
  2. prefill of one 8k-token prompt on the 8B shape: achieved TFLOP/s as a fraction of the matmul peak;
  3. nano-vllm's offline workload on a Qwen3-0.6B shape: 256 sequences, prompt and output lengths uniform
     in 100-1024, ignore_eos: output tokens/s (and HF transformers `generate` on the same, with --hf).

    python benchmarks/gpu_perf.py --tokenizer PATH [--only decode,prefill,offline] [--hf] [--json out.json]

The tokenizer (any HF tokenizer folder) only has to exist: prompts are token ids.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time

import torch

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def timed(fn, repeat: int = 10) -> float:
    """Median seconds of fn() over `repeat` runs after one warm-up, timed with CUDA events."""
    fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(n: int = 1 << 28) -> float:
    """GB/s of a device-to-device copy of 512 MiB of bf16 (far beyond L2), bytes read plus written."""
    src, dst = torch.randn(n, dtype=torch.bfloat16, device="cuda"), torch.empty(n, dtype=torch.bfloat16, device="cuda")
    return 2 * n * 2 / timed(lambda: dst.copy_(src)) / 1e9


def matmul_rate(n: int = 8192) -> float:
    """TFLOP/s of an n x n x n bf16 matmul on random data."""
    a, b = (
        torch.randn(n, n, dtype=torch.bfloat16, device="cuda"),
        torch.randn(n, n, dtype=torch.bfloat16, device="cuda"),
    )
    return 2 * n**3 / timed(lambda: a @ b) / 1e12


def ceilings() -> dict:
    result = {"copy_GBps": copy_bandwidth(), "bf16_matmul_TFLOPs": matmul_rate()}
    torch.cuda.empty_cache()
    return result


def model_folder(root: str, name: str, config: dict, tokenizer: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    for file in os.listdir(tokenizer):
        if file.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(tokenizer, file), path)
    return path


def make_llm(path: str, **kwargs):
    from tachyon import LLM

    return LLM(path, load_format="dummy", dtype="bfloat16", **kwargs)


def generate_seconds(llm, prompts: list[list[int]], max_tokens) -> float:
    from tachyon import SamplingParams

    outs = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in outs]
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate(prompts, params)
    return time.perf_counter() - start


def decode_rate(llm, batch: int, prompt_len: int = 128, steps: int = 128) -> float:
    """Decode tokens/s: (time of prefill + `steps` decodes) - (time of prefill + 1), over steps - 1."""
    rng = random.Random(batch)
    prompts = [[rng.randrange(1000, 30000) for _ in range(prompt_len)] for _ in range(batch)]
    generate_seconds(llm, prompts, 4)  # warm-up (prefix caching is off: every run recomputes)
    short = min(generate_seconds(llm, prompts, 1) for _ in range(3))
    long = min(generate_seconds(llm, prompts, steps) for _ in range(2))
    return batch * (steps - 1) / (long - short)


def bench_decode(path: str, ceil: dict, results: dict) -> None:
    for eager in (False, True):
        llm = make_llm(path, max_model_len=4096, max_num_seqs=64, enable_prefix_caching=False, enforce_eager=eager)
        model = llm.engine.runner.model
        weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
        for batch in (1, 8, 64):
            rate = decode_rate(llm, batch)
            key = f"decode_8b_b{batch}_{'eager' if eager else 'graphs'}"
            results[key] = rate
            if batch == 1:
                a = llm.engine.runner.attn_layers[0]
                kv_bytes = 2 * len(llm.engine.runner.attn_layers) * a.num_kv_heads * a.head_dim * 2 * 192  # ~mid-run
                roofline = ceil["copy_GBps"] * 1e9 / (weight_bytes + kv_bytes)
                results[f"{key}_roofline_tok_s"] = roofline
                results[f"{key}_fraction"] = rate / roofline
            graphs = llm.engine.runner.graphs
            if graphs is not None:  # the GPU's own time for the step, without the host around it
                results[f"{key}_replay_ms"] = timed(graphs.graphs[graphs.padded_size(batch)].replay) * 1e3
            print(f"{key}: {rate:,.1f} tok/s", flush=True)
        del llm, model, graphs  # the graphs hold the model, whose attention layers hold the KV pool
        gc.collect()
        torch.cuda.empty_cache()


def bench_prefill(path: str, ceil: dict, results: dict, tokens: int = 8192) -> None:
    llm = make_llm(path, max_model_len=tokens + 16, max_num_batched_tokens=tokens, enable_prefix_caching=False)
    cfg = llm.engine.source.hf_config
    model = llm.engine.runner.model
    linear = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n
    )
    attn = 2 * 2 * (tokens * tokens / 2) * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    flops = 2 * linear * tokens + attn
    prompt = [[random.Random(0).randrange(1000, 30000) for _ in range(tokens)]]
    generate_seconds(llm, prompt, 1)  # warm-up
    seconds = min(generate_seconds(llm, prompt, 1) for _ in range(3))
    results["prefill_8k_s"] = seconds
    results["prefill_8k_TFLOPs"] = flops / seconds / 1e12
    results["prefill_8k_fraction"] = results["prefill_8k_TFLOPs"] / ceil["bf16_matmul_TFLOPs"]
    print(f"prefill {tokens}: {seconds * 1e3:.1f} ms, {results['prefill_8k_TFLOPs']:.0f} TFLOP/s", flush=True)
    del llm, model
    gc.collect()
    torch.cuda.empty_cache()


def bench_offline(path: str, results: dict, hf: bool) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 30000) for _ in range(rng.randint(100, 1024))] for _ in range(256)]
    outs = [rng.randint(100, 1024) for _ in range(256)]
    llm = make_llm(path, max_model_len=4096, max_num_seqs=256, max_num_batched_tokens=8192)
    generate_seconds(llm, prompts[:8], 8)  # warm-up
    seconds = generate_seconds(llm, prompts, outs)
    results["offline_qwen3_06b_tok_s"] = sum(outs) / seconds
    print(f"offline qwen3-0.6b: {sum(outs):,} tokens in {seconds:.1f} s = {sum(outs) / seconds:,.0f} tok/s", flush=True)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    if hf:
        results["offline_qwen3_06b_hf_tok_s"] = sum(outs) / hf_offline_seconds(path, prompts, max(outs))
        results["offline_ratio_vs_hf"] = results["offline_qwen3_06b_tok_s"] / results["offline_qwen3_06b_hf_tok_s"]


def hf_offline_seconds(path: str, prompts: list[list[int]], max_new: int, batch: int = 128) -> float:
    """HF `generate`, static left-padded batches, random weights: every sequence runs to the batch's longest
    output, which is what static batching costs (only the requested tokens are counted)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16).cuda().eval()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device="cuda")
        with torch.no_grad():
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False
            )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"HF offline: {seconds:.1f} s", flush=True)
    del model
    torch.cuda.empty_cache()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="an HF tokenizer folder, copied into the model folders")
    parser.add_argument("--only", default="decode,prefill,offline", help="comma list of decode, prefill, offline")
    parser.add_argument("--hf", action="store_true", help="also run HF transformers on the offline workload")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    results.update(ceilings())
    print(
        f"ceilings: {results['copy_GBps']:.0f} GB/s copy, {results['bf16_matmul_TFLOPs']:.0f} TFLOP/s bf16", flush=True
    )
    with tempfile.TemporaryDirectory() as root:
        llama = model_folder(root, "llama-3.1-8b-shape", LLAMA_8B, args.tokenizer)
        qwen = model_folder(root, "qwen3-0.6b-shape", QWEN3_06B, args.tokenizer)
        if "decode" in parts:
            bench_decode(llama, results, results)
        if "prefill" in parts:
            bench_prefill(llama, results, results)
        if "offline" in parts:
            bench_offline(qwen, results, args.hf)
    print("\n| figure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:,.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
