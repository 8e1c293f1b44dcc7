"""`tachyon bench` on the command line: flags -> `BenchConfig` -> `run_benchmark` -> console summary
and --output files; `tachyon bench report RUN.json` and `tachyon bench compare A.json B.json` work
on saved runs. `tachyon.cli.build_parser` registers it with `add_bench_parser`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from tachyon.bench.client import ENDPOINTS, ClientConfig, normalize_url
from tachyon.bench.data import TokenDist
from tachyon.bench.metrics import SLO_METRICS, parse_slos
from tachyon.bench.profiles import DEFAULT_THROUGHPUT_CONCURRENCY, PROFILES, ProfileOptions
from tachyon.bench.report import Progress, check_output_paths, render_compare, render_summary, write_outputs
from tachyon.bench.results import load_json
from tachyon.bench.runner import BenchConfig, DataConfig, run_benchmark
from tachyon.bench.scheduler import Limits
from tachyon.config import parse_json_object

DESCRIPTION = """\
Load-benchmark an OpenAI-compatible server (tachyon serve, vLLM, ...): stream requests on a schedule
and report TTFT, ITL, TPOT, end-to-end latency, throughput and goodput per load level.

profiles: synchronous (one request at a time), concurrent (--concurrency N streams), throughput
(everything at once up to --max-concurrency), constant and poisson (--rate R requests/s), sweep
(synchronous, throughput, then --sweep-steps constant rates strictly between the two)."""

EPILOG = """\
examples:
  tachyon bench --profile sweep --max-seconds 30 --output run.json --output run.csv
  tachyon bench --profile poisson --rate 2 4 8 --prompt-tokens 512 --output-tokens 128 --max-requests 200
  tachyon bench --profile concurrent --concurrency 16 --data prompts.jsonl --endpoint chat
  tachyon bench report run.json --output run.html
  tachyon bench compare before.json after.json"""


def add_bench_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="load-benchmark an OpenAI-compatible server (TTFT, ITL, TPOT, throughput, goodput)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    _add_target_args(bench.add_argument_group("server"))
    _add_load_args(bench.add_argument_group("load"))
    _add_limit_args(bench.add_argument_group("limits (each benchmark)"))
    _add_data_args(bench.add_argument_group("data"))
    _add_output_args(bench.add_argument_group("results"))
    bench.set_defaults(func=_bench)
    commands = bench.add_subparsers(dest="bench_command", metavar="{report,compare}", title="saved runs")
    report = commands.add_parser(
        "report", help="print a saved run's summary again, or re-render it", formatter_class=_HelpFormatter
    )
    report.add_argument("run", help="a JSON file written by --output run.json")
    report.add_argument("--output", action="append", default=[], help="also write it as .html/.csv/.json (repeatable)")
    report.set_defaults(func=_report)
    compare = commands.add_parser(
        "compare", help="ratio B / A of each metric at each load level", formatter_class=_HelpFormatter
    )
    compare.add_argument("a", help="baseline run (JSON)")
    compare.add_argument("b", help="run to compare with the baseline (JSON)")
    compare.set_defaults(func=_compare)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; each flag's help states its own default."""


def _add_target_args(g) -> None:
    g.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server base URL; a trailing /v1 is fine (default: %(default)s)"
    )
    g.add_argument(
        "--endpoint",
        choices=list(ENDPOINTS),
        default="completions",
        help="completions: POST /v1/completions; chat: POST /v1/chat/completions with one user message "
        "(default: %(default)s)",
    )
    g.add_argument("--model", default=None, help="model name to request (default: the first of GET /v1/models)")
    g.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default: $OPENAI_API_KEY)"
    )
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="send ignore_eos=true (vLLM's extension) so every request generates its full max_tokens",
    )
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the server's)")
    g.add_argument(
        "--extra-body", default=None, help="JSON object merged into every request body, e.g. '{\"top_k\": 1}'"
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds before a request counts as failed (default: %(default)s)",
    )


def _add_load_args(g) -> None:
    g.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="synchronous",
        help="load profile, see above (default: %(default)s)",
    )
    g.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[],
        help="requests per second for constant/poisson; several values run one benchmark each",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[],
        help="streams for the concurrent profile; several values run one benchmark each",
    )
    g.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help=f"most requests in flight: throughput's cap (default {DEFAULT_THROUGHPUT_CONCURRENCY}), "
        "and a cap for constant/poisson/sweep rates (default: none)",
    )
    g.add_argument(
        "--sweep-steps",
        type=int,
        default=8,
        help="constant-rate benchmarks a sweep runs after its first two (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for synthetic prompts, token counts and poisson gaps (default: %(default)s)",
    )


def _add_limit_args(g) -> None:
    g.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop each benchmark after this long; requests still in flight count as incomplete",
    )
    g.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="send at most this many requests per benchmark and wait for them (default when neither "
        "limit is given: 100, or each row of --data once)",
    )
    g.add_argument(
        "--max-error-rate",
        type=float,
        default=None,
        help="stop a benchmark once more than this fraction of its finished requests failed (judged after 10 finished)",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="leave out of the statistics the first requests: a fraction of them (< 1) or those "
        "sent in the first N seconds (>= 1); they are still recorded (default: %(default)s)",
    )
    g.add_argument(
        "--cooldown",
        type=float,
        default=0.0,
        help="leave out of the statistics the last requests to finish: a fraction of them (< 1) or those "
        "ending in the last N seconds (>= 1) (default: %(default)s)",
    )


def _add_data_args(g) -> None:
    g.add_argument(
        "--data",
        default=None,
        help="prompts from a file instead of synthetic ones: .jsonl (a `prompt` field, optional "
        "`output_tokens`), .csv (a `prompt` column, optional `output_tokens`), .txt (one per line), or "
        "hf:NAME[:CONFIG[:SPLIT]], a Hugging Face dataset's prompt/text column (needs the network or its cache)",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for exact synthetic prompts: HF folder, hub id or .gguf file "
        "(default: the server's POST /tokenize)",
    )
    for kind, mean in (("prompt", 256), ("output", 128)):
        what = (
            "prompt tokens per request, as the server counts them (--prefix-tokens come on top)"
            if kind == "prompt"
            else "output tokens per request, sent as max_tokens (a file row's output_tokens wins)"
        )
        g.add_argument(f"--{kind}-tokens", type=int, default=mean, help=f"mean {what} (default: %(default)s)")
        g.add_argument(
            f"--{kind}-tokens-stdev",
            type=float,
            default=0.0,
            help="normal spread around the mean (default: 0, all equal)",
        )
        g.add_argument(f"--{kind}-tokens-min", type=int, default=None, help="clip samples below (default: 1)")
        g.add_argument(f"--{kind}-tokens-max", type=int, default=None, help="clip samples above (default: no clip)")
    g.add_argument(
        "--prefix-tokens",
        type=int,
        default=0,
        help="tokens of one prefix shared by every synthetic prompt (exercises prefix caching; default: %(default)s)",
    )
    g.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="distinct prompts to prepare (requests cycle through them; default: one per request "
        "when --max-requests bounds the run, else 1000; --data: every row)",
    )


def _add_output_args(g) -> None:
    g.add_argument(
        "--output",
        action="append",
        default=[],
        help="write results: .json (every request and the aggregates; `bench report` reads it), "
        ".csv (one row per benchmark) or .html (a self-contained report with plots); repeatable",
    )
    g.add_argument(
        "--slo",
        action="append",
        default=[],
        help=f"goodput limit NAME=MS with NAME in {', '.join(SLO_METRICS)} (repeatable): a request "
        "is good when it meets all of them",
    )
    g.add_argument("--no-progress", action="store_true", help="no live progress line")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    extra_body = _json_object(args.extra_body)
    client = ClientConfig(
        base_url=normalize_url(args.url),
        endpoint=args.endpoint,
        model=args.model,
        api_key=args.api_key,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        extra_body=extra_body,
        timeout=args.request_timeout,
    )
    if args.num_prompts is not None and args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be at least 1, got {args.num_prompts}")
    data = DataConfig(
        prompt=_dist(args, "prompt"),
        output=_dist(args, "output"),
        path=args.data,
        tokenizer=args.tokenizer,
        prefix_tokens=args.prefix_tokens,
        num_prompts=args.num_prompts,
    )
    options = ProfileOptions(
        rates=tuple(args.rate),
        concurrencies=tuple(args.concurrency),
        max_concurrency=args.max_concurrency,
        sweep_steps=args.sweep_steps,
        seed=args.seed,
    )
    return BenchConfig(
        client=client,
        data=data,
        profile=args.profile,
        profile_options=options,
        limits=Limits(args.max_seconds, args.max_requests, args.max_error_rate),
        warmup=args.warmup,
        cooldown=args.cooldown,
        slos=parse_slos(args.slo),
        seed=args.seed,
        progress=not args.no_progress,
    )


def _dist(args: argparse.Namespace, kind: str) -> TokenDist:
    get = lambda suffix: getattr(args, f"{kind}_tokens{suffix}")
    return TokenDist(f"--{kind}-tokens", get(""), get("_stdev"), get("_min"), get("_max"))


def _json_object(text: str | None) -> dict:
    return parse_json_object(text, "--extra-body") if text else {}


def _bench(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    config = config_from_args(args)
    check_output_paths(args.output)
    argv = " ".join(sys.argv[1:]) if sys.argv else ""
    try:
        run = asyncio.run(run_benchmark(config, Progress(config.progress), meta={"command": f"tachyon {argv}"}))
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    print(render_summary(run))
    write_outputs(run, args.output)
    for path in args.output:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    check_output_paths(args.output)
    run = load_json(args.run)
    print(render_summary(run))
    write_outputs(run, args.output)
    return 0


def _compare(args: argparse.Namespace) -> int:
    print(render_compare(load_json(args.a), load_json(args.b), args.a, args.b))
    return 0
