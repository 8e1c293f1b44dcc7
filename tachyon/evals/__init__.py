"""Accuracy evaluation: perplexity, small custom tasks and the built-in `lee_cloze`, on the in-process engine
or a server URL; an lm-evaluation-harness backend (`tachyon.evals.lm_eval_backend`, imported on demand: it
needs lm-eval) and recovery of compressed models. The `tachyon eval` command is `tachyon.evals.cli`; see
docs/evals.md.
"""

from __future__ import annotations

from tachyon.corpus import calibration_documents, evaluation_text, read_corpus
from tachyon.evals.cloze import cloze_task
from tachyon.evals.eval_model import EngineModel, EvalModel
from tachyon.evals.perplexity import PerplexityResult, perplexity
from tachyon.evals.recovery import RecoveryReport, compare
from tachyon.evals.results import TaskResult
from tachyon.evals.server_model import ServerModel
from tachyon.evals.tasks import Task, evaluate_task, load_task

__all__ = [
    "EngineModel",
    "EvalModel",
    "PerplexityResult",
    "RecoveryReport",
    "ServerModel",
    "Task",
    "TaskResult",
    "calibration_documents",
    "cloze_task",
    "compare",
    "evaluate_task",
    "evaluation_text",
    "load_task",
    "perplexity",
    "read_corpus",
]
