"""Command-line flags for the engine, in vLLM's spelling, shared by `tachyon generate` and `tachyon serve`."""

from __future__ import annotations

import argparse

from tachyon.config import EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument(
        "model",
        nargs="?",
        default=None,
        help="HF folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id, if not the model's own")
    g.add_argument(
        "--dtype",
        default="auto",
        help="auto (fp32 on CPU: exact against HF; the checkpoint's bf16/fp16 on GPU), float32, bfloat16 (on CPUs "
        "with AVX512_BF16 about twice as fast as fp32) or float16",
    )
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="longest prompt + output in tokens (default: the model's context length)",
    )
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in one step")
    g.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=2048,
        help="token budget of one step; longer prompts are prefilled in chunks",
    )
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse KV blocks of identical prompt prefixes",
    )
    g.add_argument(
        "--kv-cache-memory",
        type=int,
        default=None,
        help="bytes for the KV cache (CPU default 2 GiB; on GPU overrides --gpu-memory-utilization)",
    )
    g.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of GPU memory for weights, activations and the KV cache",
    )
    g.add_argument(
        "--attention-backend",
        default="auto",
        help="auto (triton on CUDA; on CPU the native kernel when it builds, else torch), cpu, torch or triton",
    )
    g.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "fp8", "int8"],
        help="auto: the model dtype; fp8 (e4m3) or int8: 8-bit keys and values with a scale per token and head, "
        "about twice the tokens in the same memory",
    )
    g.add_argument(
        "--load-format",
        default="auto",
        choices=["auto", "dummy"],
        help="dummy: random weights of the model's shape (needs only config.json and a tokenizer); for benchmarks",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="batch-invariant mode (CPU, dense models): a request's tokens and logprobs are bit for bit the same "
        "whatever else is batched with it, however its prompt is chunked or cached. Every query row attends "
        "through the native kernel, prefill included, which makes long prompts slower",
    )
    g.add_argument(
        "--enforce-eager",
        action="store_true",
        help="on GPU, launch every kernel from Python instead of replaying CUDA graphs for decode steps",
    )
    g.add_argument(
        "--scheduling-policy",
        default="fcfs",
        choices=["fcfs", "priority"],
        help="order of waiting requests; priority: lower value first, newest preempted first",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for requests that do not give their own")
    g.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="split every layer across this many processes (one GPU each on CUDA; gloo on CPU). Started here on "
        "one host, or by torchrun (`torchrun --nproc-per-node N --no-python tachyon serve ...`) on several",
    )
    g.add_argument(
        "--kv-transfer-timeout",
        type=float,
        default=60.0,
        help="disaggregated serving: seconds a prefill instance keeps a finished prompt's KV for a decode "
        "instance to fetch (then frees it), and how long a decode instance waits on a stalled transfer",
    )
    g.add_argument(
        "--speculative-config",
        default=None,
        help='speculative decoding as JSON, in vLLM\'s spelling: {"method": "ngram", "num_speculative_tokens": 5, '
        '"prompt_lookup_max": 4}, {"method": "draft_model", "model": DRAFT, ...} or {"method": "self_spec", '
        '"num_draft_layers": 8, ...}; "disable_by_batch_size": N and "adaptive": false (always '
        "num_speculative_tokens) are optional. Output is unchanged; it only gets faster at low concurrency",
    )


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=args.enable_prefix_caching,
        kv_cache_memory=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization,
        attention_backend=args.attention_backend,
        kv_cache_dtype=args.kv_cache_dtype,
        enforce_eager=args.enforce_eager,
        load_format=args.load_format,
        scheduling_policy=args.scheduling_policy,
        seed=args.seed,
        speculative_config=args.speculative_config,
        tensor_parallel_size=args.tensor_parallel_size,
        kv_transfer_timeout=args.kv_transfer_timeout,
        deterministic=args.deterministic,
    )
