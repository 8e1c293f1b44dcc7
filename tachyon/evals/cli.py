"""`tachyon eval`: perplexity, custom tasks and lm-eval tasks on the in-process engine or a server URL, and the
recovery of a compressed model against its original. `tachyon.cli.build_parser` registers it through
`add_eval_parser`.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import TYPE_CHECKING

from tachyon.entrypoints.engine_args import add_engine_args, engine_config_from_args
from tachyon.evals.eval_model import is_url

if TYPE_CHECKING:
    from tachyon.config import EngineConfig
    from tachyon.evals.results import TaskResult
    from tachyon.evals.runner import EvalOptions

_EPILOG = """\
models: an HF folder, .gguf file or hub id runs in-process on the engine flags below; an
http(s)://HOST:PORT URL is evaluated through its OpenAI API (perplexity and custom tasks).

tasks (--task, repeatable):
  lee                 perplexity on the built-in evaluation slice (lee.cor, 50 news articles)
  lee_cloze           built-in multiple choice: each article's next sentence among four
  PATH.txt            perplexity of a text file
  hf:NAME[:CONFIG[:SPLIT]]  perplexity of a Hugging Face dataset's text column, e.g.
                      hf:wikitext:wikitext-2-raw-v1:test (split default: test)
  PATH.jsonl|.yaml    a custom multiple-choice or generate-until task (docs/evals.md)
  lm-eval:NAME        an lm-evaluation-harness task on the tachyon backend (in-process)

examples:
  tachyon eval --task lee --task lee_cloze
  tachyon eval out/w8a16 --task lee --task my_task.yaml --limit 100 --output results.json
  tachyon eval http://127.0.0.1:8000 --task lee --task my_task.yaml
  tachyon eval --baseline MODEL --candidate out/w8a16 --task lee --task lm-eval:arc_easy
"""


def add_eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="measure accuracy in-process: perplexity, custom tasks, lm-eval tasks, recovery of a compressed model",
        description="Evaluate MODEL (or --baseline against --candidate) on each --task, print a table and "
        "optionally write the results as JSON.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_args(ev)
    g = ev.add_argument_group("evaluation")
    g.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="SPEC",
        help="task to run: lee, lee_cloze, a .txt file, hf:DATASET, a .jsonl/.yaml task file or lm-eval:NAME "
        "(repeatable)",
    )
    g.add_argument("--limit", type=int, default=None, help="first N docs of each task (perplexity: first N documents)")
    g.add_argument("--output", default=None, help="write the results to this JSON file (atomically)")
    g.add_argument(
        "--window",
        type=int,
        default=None,
        help="perplexity window in tokens (default: min(1024, max_model_len - 1))",
    )
    g.add_argument("--stride", type=int, default=None, help="perplexity stride in tokens (default: window // 2)")
    g.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAMLs for lm-eval:NAME")
    g.add_argument("--baseline", default=None, help="recovery mode: the original model or URL (instead of MODEL)")
    g.add_argument(
        "--candidate", default=None, help="recovery mode: the compressed model or URL compared with --baseline"
    )
    ev.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from tachyon.evals.recovery import compare, format_recovery
    from tachyon.evals.results import format_table, write_json
    from tachyon.evals.runner import EvalOptions, resolve_task

    models = _models(args)
    _check_tasks_fit(models, args.task)
    opts = EvalOptions(args.limit, args.window, args.stride, args.include_path)
    tasks = [resolve_task(spec, args.include_path) for spec in args.task]  # fail fast, before loading a model
    config = engine_config_from_args(args)
    runs = {label: _evaluate(model, tasks, opts, config) for label, model in models.items()}
    payload = {
        "models": {label: model or "default" for label, model in models.items()},
        "options": vars(opts),
        "results": {label: [vars(r) for r in results] for label, results in runs.items()},
    }
    for label, results in runs.items():
        print(f"## {label}: {models[label] or 'default model'}\n{format_table(results)}\n")
    if len(runs) == 2:
        report = compare(runs["baseline"], runs["candidate"])
        payload["recovery"] = report.to_dict()
        print(f"## recovery (candidate vs baseline)\n{format_recovery(report)}\n")
    if args.output:
        print(f"wrote {write_json(args.output, payload)}", file=sys.stderr)
    return 0


def _models(args: argparse.Namespace) -> dict[str, str | None]:
    if (args.baseline is None) != (args.candidate is None):
        raise ValueError("--baseline and --candidate go together (recovery mode)")
    if args.baseline is None:
        models = {"model": args.model}
    elif args.model is not None:
        raise ValueError("give either MODEL or --baseline/--candidate, not both")
    else:
        models = {"baseline": args.baseline, "candidate": args.candidate}
    for model in models.values():
        _check_model(model)
    return models


def _check_model(model: str | None) -> None:
    """Refuse a model that is clearly a local path (absolute, ./ or ../, .gguf, two or more slashes) and
    does not exist, before the first model loads; anything else may still be a hub id or a URL."""
    if model is None or is_url(model) or os.path.exists(model):
        return
    looks_local = model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf") or model.count("/") > 1
    if looks_local:
        raise ValueError(f"model {model} does not exist")


def _check_tasks_fit(models: dict[str, str | None], specs: list[str]) -> None:
    from tachyon.evals.runner import HARNESS_ON_SERVER, LM_EVAL_PREFIX

    if any(is_url(m) for m in models.values()) and any(s.startswith(LM_EVAL_PREFIX) for s in specs):
        raise ValueError(HARNESS_ON_SERVER)


def _evaluate(model: str | None, tasks: list, opts: EvalOptions, config: EngineConfig) -> list[TaskResult]:
    """Every task on one model (engine on `config`, or a server URL); the engine is freed afterwards."""
    from tachyon.evals.eval_model import open_model
    from tachyon.evals.runner import run_tasks

    eval_model = open_model(model, config)
    try:
        return run_tasks(eval_model, tasks, opts)
    finally:
        del eval_model
        gc.collect()  # free the engine's KV cache before the next model loads
