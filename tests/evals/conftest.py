"""Fixtures for the evaluation tests: one engine on the default model (fp32 CPU) shared by every module, and
the harness's own HF backend on the same weights as the reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tachyon import LLM

LM_EVAL_DATA = Path(__file__).parent.parent / "data" / "lm_eval"
EVAL_DATA = Path(__file__).parent.parent / "data" / "evals"
KV_CACHE_BYTES = 256 << 20


@pytest.fixture(scope="session")
def eval_llm(model_dir) -> LLM:
    return LLM(model_dir, kv_cache_memory=KV_CACHE_BYTES, max_model_len=2048)


@pytest.fixture(scope="session")
def lm_eval_task_dir(tmp_path_factory) -> str:
    """The local harness tasks (tests/data/lm_eval's MC task, mc_fewshot.yaml's twin) with data paths filled in."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    data = str(LM_EVAL_DATA / "mc_smoke.jsonl")
    for template in (LM_EVAL_DATA / "tachyon_mc_smoke.yaml.in", EVAL_DATA / "tachyon_mc_fewshot.yaml.in"):
        (folder / template.name.removesuffix(".in")).write_text(template.read_text().replace("DATA_FILE", data))
    return str(folder)


@pytest.fixture(scope="session")
def task_manager(lm_eval_task_dir):
    """The harness's task index over the local tasks only (indexing its 14k built-in tasks takes seconds)."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return TaskManager(include_path=lm_eval_task_dir, include_defaults=False)


@pytest.fixture(scope="session")
def hf_lm(model_dir):
    """lm-eval's own `hf` backend on the default model, fp32 CPU: the reference for ours."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=16)


@pytest.fixture(scope="session")
def hf_mc_results(hf_lm, task_manager) -> dict:
    """The harness's results for the local MC task with its HF backend, samples included."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=hf_lm, tasks=["tachyon_mc_smoke"], task_manager=task_manager, log_samples=True, bootstrap_iters=0
    )
