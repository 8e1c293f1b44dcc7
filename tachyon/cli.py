"""`tachyon` command line: generate, convert, serve, compress (and, as they land, bench, eval, plan)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tachyon.bench.cli import add_bench_parser
from tachyon.entrypoints.engine_args import add_engine_args, engine_config_from_args
from tachyon.evals.cli import add_eval_parser
from tachyon.plan.cli import add_plan_parser
from tachyon.router.cli import add_router_parser
from tachyon.validate.cli import add_validate_parser


def _generate(args: argparse.Namespace) -> int:
    from tachyon.entrypoints.llm import LLM
    from tachyon.sampling_params import SamplingParams

    config = engine_config_from_args(args)
    if _torchrun_worker(config):
        return 0
    llm = LLM(**vars(config))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.sampling_seed,
    )
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": text}] for text in args.chat], params)
        prompts = args.chat
    else:
        prompts = args.prompt or ["The capital of France is"]
        outputs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outputs):
        print(f"### {prompt}\n{out.outputs[0].text}\n")
    stats = llm.engine.stats()
    print(
        f"[prefix cache hit rate {stats.prefix_cache_hits}/{stats.prefix_cache_queries} tokens, "
        f"{stats.num_preemptions} preemptions]",
        file=sys.stderr,
    )
    spec = stats.spec_decode
    if spec is not None:
        print(
            f"[speculative decoding: {spec.num_accepted_tokens}/{spec.num_draft_tokens} draft tokens accepted "
            f"({spec.acceptance_rate:.0%}), mean accepted length {spec.mean_accepted_length:.2f}, "
            f"{spec.drafts_per_step:.1f} drafts per step]",
            file=sys.stderr,
        )
    llm.shutdown()
    return 0


def _torchrun_worker(config) -> bool:
    """Under torchrun, ranks other than 0 mirror rank 0's model calls instead of running the command."""
    from tachyon.distributed.parallel_state import launched_by_torchrun

    if config.tensor_parallel_size == 1 or not launched_by_torchrun() or int(os.environ["RANK"]) == 0:
        return False
    from tachyon.distributed.workers import serve_torchrun_worker

    serve_torchrun_worker(config)
    return True


def _convert(args: argparse.Namespace) -> int:
    from tachyon.models.convert import convert_gguf

    print(convert_gguf(args.gguf_file, args.out_dir, overwrite=args.overwrite))
    return 0


def _compress(args: argparse.Namespace) -> int:
    from tachyon.compress import compress_model, oneshot
    from tachyon.config import parse_dtype

    dtype = parse_dtype(args.dtype) if args.dtype else None
    if args.recipe is None:
        print(
            compress_model(
                args.model,
                args.scheme,
                args.output,
                sparsity=args.sparsity,
                overwrite=args.overwrite,
                group_size=args.group_size,
                dtype=dtype,
            )
        )
        return 0
    if args.scheme or args.sparsity or args.group_size:
        raise ValueError("--recipe says what to do; --scheme, --sparsity and --group-size go into the recipe instead")
    report = oneshot(
        args.model,
        args.recipe,
        args.dataset,
        output_dir=args.output,
        num_calibration_samples=args.num_calibration_samples,
        max_seq_length=args.max_seq_length,
        overwrite=args.overwrite,
        device=args.device,
        dtype=dtype,
        pipeline=args.pipeline,
    )
    print(report.output_dir)
    print(
        f"{report.num_calibration_samples} calibration samples ({report.num_calibration_tokens} tokens), "
        f"{report.seconds:.1f} s, peak memory {report.peak_rss_bytes / 2**20:.0f} MiB",
        file=sys.stderr,
    )
    return 0


def _add_compress_parser(sub) -> None:
    from tachyon.compress.calibration_data import DEFAULT_DATASET
    from tachyon.compress.modifiers import MODIFIERS
    from tachyon.quantization.schemes import supported_schemes

    comp = sub.add_parser(
        "compress",
        help="compress a model into a compressed-tensors checkpoint that Tachyon, vLLM and HF transformers load: "
        "a recipe (GPTQ, AWQ, SmoothQuant, SparseGPT...) over calibration data, or data-free --scheme/--sparsity",
        description="Either --recipe (calibrated algorithms, LLM Compressor's YAML layout) or --scheme and/or "
        "--sparsity (round-to-nearest, magnitude 2:4, no data). Modifiers: " + ", ".join(MODIFIERS),
    )
    comp.add_argument("model", nargs="?", default=None, help="HF folder, .gguf file or hub id (default: SmolLM2-135M)")
    comp.add_argument(
        "--recipe", default=None, help="recipe YAML file (see docs/compression.md); saved next to the checkpoint"
    )
    comp.add_argument(
        "--dataset",
        default=None,
        help=f"calibration text for --recipe: a .txt/.jsonl/.json/.parquet file or hf:NAME[:CONFIG[:SPLIT]] "
        f"(default: the built-in {DEFAULT_DATASET} news articles, disjoint from the lee perplexity slice)",
    )
    comp.add_argument(
        "--num-calibration-samples", type=int, default=512, help="calibration documents to use (default 512)"
    )
    comp.add_argument(
        "--max-seq-length", type=int, default=2048, help="tokens kept of each calibration document (default 2048)"
    )
    comp.add_argument(
        "--pipeline",
        choices=["sequential", "whole_model"],
        default="sequential",
        help="sequential: read, calibrate and write one decoder layer at a time (low memory); "
        "whole_model: load every layer first",
    )
    comp.add_argument(
        "--device", default=None, help="device for calibration, e.g. cpu or cuda (default: cuda if available)"
    )
    comp.add_argument(
        "--scheme",
        default=None,
        help=f"data-free round-to-nearest preset: {', '.join(supported_schemes())} (omit: keep dense)",
    )
    comp.add_argument(
        "--sparsity",
        choices=["2:4"],
        default=None,
        help="data-free: prune every decoder Linear to 2:4 by magnitude (2 of each 4 consecutive inputs kept) "
        "before quantizing",
    )
    comp.add_argument("--output", required=True, help="checkpoint folder to create (written atomically)")
    comp.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="with --scheme: input columns per weight scale for grouped schemes (-1: per output channel); "
        "must divide the layer widths, e.g. 64 for SmolLM2's 576",
    )
    comp.add_argument(
        "--dtype", default=None, help="dtype of unquantized tensors and scales, e.g. bfloat16 (default: as stored)"
    )
    comp.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    comp.set_defaults(func=_compress)


def _serve(args: argparse.Namespace) -> int:
    from tachyon.server.api_server import run_server

    if _torchrun_worker(engine_config_from_args(args)):
        return 0
    return run_server(args)


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(serve)
    g = serve.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    g.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    g.add_argument(
        "--api-key",
        default=None,
        help="require this bearer token on every endpoint but /health, /version and /metrics",
    )
    g.add_argument(
        "--served-model-name",
        default=None,
        help="model name in the API (default: the model path's basename, or SmolLM2-135M-Instruct)",
    )
    g.add_argument("--chat-template", default=None, help="chat template file, or the Jinja template itself")
    g.add_argument(
        "--role",
        default="colocated",
        choices=["colocated", "prefill", "decode"],
        help="disaggregated serving behind `tachyon router`: prefill instances compute prompts and keep their KV "
        "for decode instances, which fetch it and generate; colocated: do both",
    )
    g.add_argument(
        "--kv-host",
        default=None,
        help="prefill role: the address decode instances reach this host's KV export server at (default: --host, "
        "or 127.0.0.1 when --host is 0.0.0.0)",
    )
    g.add_argument("--kv-port", type=int, default=0, help="prefill role: KV export server port (0: any free port)")
    g.add_argument(
        "--kv-connector",
        default="tcp",
        choices=["tcp", "shm", "torch"],
        help="decode role: how fetched KV travels: tcp (any two hosts), shm (shared memory, same host) or torch "
        "(a torch.distributed send: NCCL from GPU to GPU, gloo between CPU instances)",
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        default=None,
        help="refuse new requests with 503 + Retry-After while this many wait (default: no bound)",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may finish after SIGTERM before they are aborted",
    )
    g.add_argument("--uvicorn-log-level", default="info", help="uvicorn log level: debug, info, warning, error")
    serve.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tachyon", description="Fast LLM inference, compression and validation.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate text offline for a few prompts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(gen)
    g = gen.add_argument_group("generation")
    g.add_argument("--prompt", action="append", help="a raw prompt (repeatable)")
    g.add_argument("--chat", action="append", help="a user message, rendered with the chat template (repeatable)")
    g.add_argument("--max-tokens", type=int, default=128, help="most new tokens per prompt")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0: off)")
    g.add_argument("--sampling-seed", type=int, default=None, help="seed for reproducible sampling")
    gen.set_defaults(func=_generate)

    conv = sub.add_parser("convert", help="write a GGUF model as a Hugging Face folder (safetensors + tokenizer)")
    conv.add_argument("gguf_file", help="the .gguf file to read")
    conv.add_argument("out_dir", help="folder to create")
    conv.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    conv.set_defaults(func=_convert)
    _add_serve_parser(sub)
    _add_compress_parser(sub)
    add_bench_parser(sub)
    add_eval_parser(sub)
    add_validate_parser(sub)
    add_plan_parser(sub)
    add_router_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
