"""`tachyon validate`: flags -> `ValidateConfig` -> `validate_model` -> the report folder. `tachyon.cli`
registers it with `add_validate_parser`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tachyon.entrypoints.engine_args import add_engine_args, engine_config_from_args
from tachyon.quantization.schemes import supported_schemes
from tachyon.validate.config import DEFAULT_SCHEMES, DEFAULT_TASKS, ValidateConfig, Workload, engine_flags

_DESCRIPTION = """\
Compress MODEL with each scheme (round-to-nearest), measure every checkpoint and the original on the same
footing, and write one report folder: report.json, report.md and a self-contained report.html with a
table (size, accuracy per task, recovery %, offline throughput, TTFT/ITL p50/p99 under a short server
load), a recommendation for latency-bound and throughput-bound use, and the command behind every figure.
A failed step is reported in the page and the other steps still run (exit status 1)."""

_EPILOG = """\
examples:
  tachyon validate                                   # the default model, W8A8 and W4A16
  tachyon validate MODEL --schemes W4A16,W8A8,FP8_DYNAMIC --output out/validation
  tachyon validate MODEL --task lee --task my_task.yaml --limit 200 --concurrency 1 8 --bench-requests 32
"""


def add_validate_parser(sub) -> None:
    val = sub.add_parser(
        "validate",
        help="compress with each scheme, evaluate and benchmark every checkpoint, write a report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_args(val)
    g = val.add_argument_group("validation")
    g.add_argument(
        "--schemes",
        default=",".join(DEFAULT_SCHEMES),
        help=f"comma-separated quantization presets among {', '.join(supported_schemes())} (default: %(default)s)",
    )
    g.add_argument("--output", default=None, help="report folder to create (default: validation/<model name>)")
    g.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    g.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="SPEC",
        help=f"accuracy task, as for `tachyon eval` (repeatable; default: {' '.join(DEFAULT_TASKS)})",
    )
    g.add_argument("--limit", type=int, default=None, help="first N docs of each task (default: all)")
    g.add_argument("--window", type=int, default=None, help="perplexity window in tokens (tachyon eval's default)")
    g.add_argument("--stride", type=int, default=None, help="perplexity stride in tokens (default: window // 2)")
    g.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="group size of grouped schemes (default: the largest of 128, 64, 32, 16 dividing every layer width)",
    )
    g.add_argument(
        "--min-recovery",
        type=float,
        default=95.0,
        help="accuracy recovery %% a scheme needs to be recommended (default: %(default)s)",
    )
    w = val.add_argument_group("performance workload (offline throughput and the server load run)")
    defaults = Workload()
    w.add_argument("--num-prompts", type=int, default=defaults.num_prompts, help="offline: prompts in one batch")
    w.add_argument("--prompt-tokens", type=int, default=defaults.prompt_tokens, help="tokens per prompt")
    w.add_argument(
        "--output-tokens", type=int, default=defaults.output_tokens, help="tokens generated per request (ignore_eos)"
    )
    w.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=list(defaults.concurrency),
        help="server: concurrent streams, one benchmark each; the lowest gives the latency figures",
    )
    w.add_argument("--bench-requests", type=int, default=defaults.bench_requests, help="server: requests per level")
    val.set_defaults(func=run_validate)


def config_from_args(args: argparse.Namespace) -> ValidateConfig:
    engine = engine_config_from_args(args)
    bare = argparse.ArgumentParser()
    add_engine_args(bare)
    workload = Workload(
        args.num_prompts, args.prompt_tokens, args.output_tokens, tuple(args.concurrency), args.bench_requests
    )
    return ValidateConfig(
        model=args.model,
        output=args.output or os.path.join("validation", _model_name(args.model)),
        schemes=tuple(s.strip() for s in args.schemes.split(",") if s.strip()),
        tasks=tuple(args.task or DEFAULT_TASKS),
        limit=args.limit,
        window=args.window,
        stride=args.stride,
        group_size=args.group_size,
        min_recovery=args.min_recovery,
        workload=workload,
        engine=engine,
        engine_flags=tuple(engine_flags(engine, engine_config_from_args(bare.parse_args([])))),
        overwrite=args.overwrite,
    )


def run_validate(args: argparse.Namespace) -> int:
    from tachyon.validate.markdown import render_summary
    from tachyon.validate.pipeline import validate_model
    from tachyon.validate.steps import FAILED

    folder = validate_model(config_from_args(args))
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
        payload = json.load(f)
    print(render_summary(payload))
    print(f"wrote {folder}: report.html, report.md, report.json", file=sys.stderr)
    return 1 if any(step["status"] == FAILED for run in payload["runs"] for step in run["steps"]) else 0


def _model_name(model: str | None) -> str:
    if model is None:
        return "default"
    return os.path.basename(os.path.normpath(model)).removesuffix(".gguf") or "model"
