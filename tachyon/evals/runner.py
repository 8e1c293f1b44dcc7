"""What `tachyon eval --task SPEC` means, and running the tasks on one model (engine or server).

`resolve_task` turns each SPEC into a task object before any model is loaded, so a missing file, a bad task
file or an unknown name fails in a second with a message naming it:

  lee                the built-in perplexity slice (lee.cor, 50 news articles; see corpus.py)
  lee_cloze          the built-in multiple-choice task on the same articles (cloze.py)
  PATH.txt           perplexity of the file's text
  hf:NAME[:CONFIG[:SPLIT]]  perplexity of a Hugging Face dataset's `text` column (needs the network or its cache)
  PATH.jsonl|.yaml   a custom task (tasks.py)
  lm-eval:NAME       an lm-evaluation-harness task on the `tachyon` backend (lm_eval_backend.py; engine only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tachyon.corpus import EVALUATION_CORPUS, hf_dataset_documents, read_corpus
from tachyon.evals.cloze import CLOZE_TASK, cloze_task
from tachyon.evals.eval_model import EngineModel
from tachyon.evals.perplexity import DEFAULT_MAX_LENGTH, perplexity
from tachyon.evals.results import TaskResult
from tachyon.evals.tasks import Task, evaluate_task, load_task

if TYPE_CHECKING:
    from tachyon.evals.eval_model import EvalModel

LM_EVAL_PREFIX = "lm-eval:"
HF_PREFIX = "hf:"
BUILTIN_TASKS = {
    EVALUATION_CORPUS: "perplexity on the corpus' evaluation slice (lee.cor: 50 news articles)",
    CLOZE_TASK: "multiple choice: the sentence that follows each lee.cor article's first one, among four",
}
HARNESS_ON_SERVER = (
    "lm-eval tasks run in-process only; against a server use the harness's own backend: "
    "lm_eval --model local-completions --model_args base_url=URL/v1/completions,tokenizer=MODEL"
)
LOWER_IS_BETTER = {"ppl", "nll", "bits_per_byte", "byte_perplexity", "word_perplexity"}


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None  # first N docs of each task (perplexity: N documents of the text)
    max_length: int | None = None  # perplexity window (default: min(1024, max_model_len - 1))
    stride: int | None = None  # perplexity stride (default: window // 2)
    include_path: str | None = None  # extra lm-eval task folder

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--window must be at least 2 tokens, got {self.max_length}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride must be at least 1, got {self.stride}")
        if self.include_path is not None and not os.path.isdir(self.include_path):
            raise ValueError(f"--include-path {self.include_path} is not a folder")


@dataclass
class PerplexityTask:
    name: str
    documents: list[str]  # joined by blank lines into one text

    def run(self, model: EvalModel, opts: EvalOptions) -> list[TaskResult]:
        docs = self.documents[: opts.limit] if opts.limit is not None else self.documents
        max_length = opts.max_length or min(DEFAULT_MAX_LENGTH, model.max_model_len - 1)
        if max_length >= model.max_model_len:
            raise ValueError(f"--window {max_length} must be less than max_model_len {model.max_model_len}")
        stride = opts.stride or max(1, max_length // 2)
        result = perplexity(model, "\n\n".join(docs), max_length, stride, use_tqdm=True)
        metrics = result.metrics()
        info = {
            "num_tokens": result.num_tokens,
            "num_bytes": result.num_bytes,
            "num_words": result.num_words,
            "num_windows": result.num_windows,
            "max_length": max_length,
            "stride": stride,
        }
        higher = {m: m not in LOWER_IS_BETTER for m in metrics}
        return [TaskResult(self.name, "perplexity", metrics, higher, len(docs), info, primary=["ppl"])]


@dataclass
class CustomTask:
    task: Task

    @property
    def name(self) -> str:
        return self.task.name

    def run(self, model: EvalModel, opts: EvalOptions) -> list[TaskResult]:
        return [evaluate_task(model, self.task, opts.limit)]


@dataclass
class HarnessTask:
    name: str
    task_manager: object = field(repr=False)

    def run(self, model: EvalModel, opts: EvalOptions) -> list[TaskResult]:
        from tachyon.evals.lm_eval_backend import evaluate_harness_task

        if not isinstance(model, EngineModel):
            raise ValueError(f"{LM_EVAL_PREFIX}{self.name}: {HARNESS_ON_SERVER}")
        return evaluate_harness_task(model.llm, self.name, opts.limit, self.task_manager)


EvalTask = PerplexityTask | CustomTask | HarnessTask


def resolve_task(spec: str, include_path: str | None = None) -> EvalTask:
    """The task a --task value names (see the module docstring); ValueError if it names none."""
    if spec.startswith(LM_EVAL_PREFIX):
        return _harness_task(spec[len(LM_EVAL_PREFIX) :], include_path)
    if spec.startswith(HF_PREFIX):
        return PerplexityTask(spec[len(HF_PREFIX) :], hf_dataset_documents(spec[len(HF_PREFIX) :]))
    if spec == CLOZE_TASK:
        return CustomTask(cloze_task())
    if spec in BUILTIN_TASKS:
        return PerplexityTask(spec, read_corpus(spec))
    if os.path.isfile(spec):
        if spec.endswith(".txt"):
            with open(spec, encoding="utf-8") as f:
                return PerplexityTask(os.path.splitext(os.path.basename(spec))[0], [f.read()])
        return CustomTask(load_task(spec))
    if os.path.splitext(spec)[1]:
        raise ValueError(f"task file {spec} does not exist")
    raise ValueError(
        f"unknown task {spec!r}: not a file, not a built-in task ({', '.join(BUILTIN_TASKS)}), not "
        f"{HF_PREFIX}DATASET and not {LM_EVAL_PREFIX}NAME"
    )


def _harness_task(name: str, include_path: str | None) -> HarnessTask:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ValueError(f"{LM_EVAL_PREFIX}{name} needs lm-evaluation-harness: pip install 'lm-eval>=0.4.5'") from e
    manager = TaskManager(include_path=include_path)
    if name not in manager.all_tasks:
        raise ValueError(
            f"unknown lm-eval task {name!r} (list them with `lm-eval ls tasks`; local ones need --include-path)"
        )
    return HarnessTask(name, manager)


def run_tasks(model: EvalModel, tasks: list[EvalTask], opts: EvalOptions) -> list[TaskResult]:
    return [result for task in tasks for result in task.run(model, opts)]
