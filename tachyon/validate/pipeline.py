"""`validate_model`: the whole validation run. For the original model and then each scheme:

  compress    tachyon compress (RTN) into <output>/models/<scheme>          (schemes only)
  accuracy    every task on the engine; recovery against the original       (tachyon eval)
  throughput  offline generate throughput on that same engine               (python -m tachyon.validate.throughput)
  serving     tachyon serve in a subprocess + a short tachyon bench load    (tachyon serve + tachyon bench)

Each step is caught on its own (steps.py): a failure is recorded and the rest still run; a step whose
input failed is skipped with the reason. Everything is written into a hidden sibling folder that is renamed
to <output> at the end, so an interrupted run leaves no half-written report.
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

from tachyon.evals.eval_model import EngineModel
from tachyon.evals.recovery import RecoveryReport, compare
from tachyon.evals.results import TaskResult, write_json
from tachyon.evals.runner import EvalOptions, resolve_task, run_tasks
from tachyon.validate.config import ValidateConfig, pick_group_size
from tachyon.validate.report import write_report
from tachyon.validate.serving import LevelStats, bench_commands, run_bench, running_server
from tachyon.validate.steps import StepResult, StepRunner
from tachyon.validate.throughput import ThroughputResult, offline_throughput

logger = logging.getLogger(__name__)

ORIGINAL = "original"
MEASURE_STEPS = ("accuracy", "throughput", "serving")  # each checkpoint's; a scheme has "compress" first


@dataclass
class ModelRun:
    """Everything measured for one row of the report: the original model or one scheme."""

    label: str  # "original" or the scheme's name
    path: str | None = None  # the checkpoint as the report names it (None: compression failed)
    size_bytes: int | None = None
    steps: list[StepResult] = field(default_factory=list)
    accuracy: list[TaskResult] | None = None
    recovery: RecoveryReport | None = None
    throughput: ThroughputResult | None = None
    serving: list[LevelStats] | None = None


@dataclass(frozen=True)
class _Folders:
    """Work happens in `work` (the hidden partial folder); commands and the report name `final`."""

    work: str
    final: str

    def work_path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def final_path(self, *parts: str) -> str:
        return os.path.join(self.final, *parts)


def validate_model(config: ValidateConfig) -> str:
    """Run the validation and write the report folder; returns its absolute path."""
    from tachyon.models.loader import load_model_source

    started = time.time()
    tasks = [resolve_task(spec) for spec in config.tasks]  # a bad task fails before any work
    source = load_model_source(config.model)
    group_size = pick_group_size(source.hf_config, config.group_size)
    final = os.path.abspath(config.output)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.partial-", dir=os.path.dirname(final))
    try:
        os.chmod(work, 0o755)
        num_steps = len(MEASURE_STEPS) + (1 + len(MEASURE_STEPS)) * len(config.schemes)  # + compress per scheme
        validation = _Validation(config, tasks, _Folders(work, final), StepRunner(num_steps))
        runs = [validation.original(source.path)]
        runs += [validation.scheme(source.path, scheme, group_size) for scheme in config.schemes]
        write_report(work, config, runs, source.path, group_size, time.time() - started)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # still there only if something failed
    logger.info("wrote %s in %.0f s", final, time.time() - started)
    return final


class _Validation:
    """The steps of one run; each `ModelRun` collects its own results and step records."""

    def __init__(self, config: ValidateConfig, tasks: list, folders: _Folders, runner: StepRunner) -> None:
        self.config, self.tasks, self.folders, self.runner = config, tasks, folders, runner
        self.baseline: ModelRun | None = None

    def original(self, model: str) -> ModelRun:
        run = ModelRun(ORIGINAL, model, disk_size(model))
        self._measure(run, model)
        self.baseline = run
        return run

    def scheme(self, model: str, scheme: str, group_size: int) -> ModelRun:
        from tachyon.compress import compress_model
        from tachyon.quantization.schemes import create_scheme

        run = ModelRun(scheme, self.folders.final_path("models", scheme))
        group = group_size if create_scheme(scheme).weights.strategy == "group" else None
        flags = ["--group-size", str(group)] if group else []
        command = shlex.join(["tachyon", "compress", model, "--scheme", scheme, *flags, "--output", run.path])
        work_path = self.folders.work_path("models", scheme)
        step, path = self.runner.run(
            "compress", scheme, command, lambda: compress_model(model, scheme, work_path, group_size=group)
        )
        run.steps.append(step)
        if path is None:
            run.path = None
            run.steps += [self.runner.skip(name, scheme, "compression failed") for name in MEASURE_STEPS]
            return run
        run.size_bytes = disk_size(path)
        self._measure(run, path)
        return run

    def _measure(self, run: ModelRun, path: str) -> None:
        """Accuracy and throughput on one engine, then serving; `path` is where the checkpoint is now."""
        os.makedirs(self.folders.work_path("runs", run.label))
        engine = _LazyEngine(path, self.config)
        self._accuracy(run, engine)
        self._throughput(run, engine)
        engine.close()
        self._serving(run, path)

    def _accuracy(self, run: ModelRun, engine: _LazyEngine) -> None:
        base = self.baseline
        models = [run.path] if base is None else ["--baseline", base.path, "--candidate", run.path]
        output = self.folders.final_path("runs", run.label, "accuracy.json")
        command = shlex.join(["tachyon", "eval", *models, *_eval_flags(self.config), "--output", output])
        opts = EvalOptions(self.config.limit, self.config.window, self.config.stride)
        step, run.accuracy = self.runner.run(
            "accuracy", run.label, command, lambda: run_tasks(EngineModel(engine.get()), self.tasks, opts)
        )
        run.steps.append(step)
        if run.accuracy is None:
            return
        if base is not None and base.accuracy is not None:
            run.recovery = compare(base.accuracy, run.accuracy)
        _write_accuracy(self.folders.work_path("runs", run.label, "accuracy.json"), opts, run, base)

    def _throughput(self, run: ModelRun, engine: _LazyEngine) -> None:
        w = self.config.workload
        command = shlex.join(
            [
                *("python", "-m", "tachyon.validate.throughput", run.path, *self.config.engine_flags),
                *("--num-prompts", str(w.num_prompts), "--prompt-tokens", str(w.prompt_tokens)),
                *("--output-tokens", str(w.output_tokens)),
            ]
        )
        step, run.throughput = self.runner.run(
            "throughput",
            run.label,
            command,
            lambda: offline_throughput(engine.get(), w.num_prompts, w.prompt_tokens, w.output_tokens),
        )
        run.steps.append(step)
        if run.throughput is not None:
            write_json(self.folders.work_path("runs", run.label, "throughput.json"), asdict(run.throughput))

    def _serving(self, run: ModelRun, path: str) -> None:
        w, flags = self.config.workload, list(self.config.engine_flags)
        command = bench_commands(run.path, flags, w, self.folders.final_path("runs", run.label, "serving.json"))
        log = self.folders.work_path("runs", run.label, "serve.log")

        def serve_and_bench() -> list[LevelStats]:
            with running_server(path, flags, log) as url:
                return run_bench(url, w, self.folders.work_path("runs", run.label, "serving.json"))

        step, run.serving = self.runner.run("serving", run.label, command, serve_and_bench)
        run.steps.append(step)


class _LazyEngine:
    """The engine of one checkpoint, built on first use and shared by the accuracy and throughput steps; a
    failure to build it is remembered, so the second step fails with the same error without retrying."""

    def __init__(self, path: str, config: ValidateConfig) -> None:
        self.path, self.config = path, config
        self.llm = None
        self.error: Exception | None = None

    def get(self):
        from tachyon import LLM

        if self.error is not None:
            raise self.error
        if self.llm is None:
            try:
                self.llm = LLM(**vars(replace(self.config.engine, model=self.path)))
            except Exception as e:
                self.error = e
                raise
        return self.llm

    def close(self) -> None:
        self.llm = None
        gc.collect()  # free the KV cache before the server loads the model again


def _eval_flags(config: ValidateConfig) -> list[str]:
    flags = [arg for spec in config.tasks for arg in ("--task", spec)]
    for flag, value in (("--limit", config.limit), ("--window", config.window), ("--stride", config.stride)):
        if value is not None:
            flags += [flag, str(value)]
    return [*flags, *config.engine_flags]


def _write_accuracy(path: str, opts: EvalOptions, run: ModelRun, original: ModelRun | None) -> None:
    """The JSON that the accuracy step's command (`tachyon eval --output`) writes."""
    if original is None:
        models, results = {"model": run.path}, {"model": run.accuracy}
    else:
        models = {"baseline": original.path, "candidate": run.path}
        results = {"baseline": original.accuracy or [], "candidate": run.accuracy}
    payload = {
        "models": models,
        "options": vars(opts),
        "results": {label: [vars(r) for r in rs] for label, rs in results.items()},
    }
    if run.recovery is not None:
        payload["recovery"] = run.recovery.to_dict()
    write_json(path, payload)


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
