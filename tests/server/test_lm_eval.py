"""lm-evaluation-harness's own `local-completions` backend scores a local multiple-choice task
against the running server; its per-choice loglikelihoods equal what the engine computes offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tachyon import LLM, SamplingParams

DATA = Path(__file__).parent.parent / "data" / "lm_eval"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    template = (DATA / "tachyon_mc_smoke.yaml.in").read_text()
    (folder / "tachyon_mc_smoke.yaml").write_text(template.replace("DATA_FILE", str(DATA / "mc_smoke.jsonl")))
    return str(folder)


def test_harness_loglikelihoods_equal_offline_engine(base_url, model_name, model_dir, task_dir):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model_args = (
        f"model={model_name},base_url={base_url}/v1/completions,tokenizer_backend=huggingface,"
        f"tokenizer={model_dir},num_concurrent=4,max_retries=1"
    )
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=model_args,
        tasks=["tachyon_mc_smoke"],
        task_manager=TaskManager(include_path=task_dir),
        log_samples=True,
    )
    samples = results["samples"]["tachyon_mc_smoke"]
    assert len(samples) == 8
    acc = results["results"]["tachyon_mc_smoke"]["acc,none"]
    assert 0.0 <= acc <= 1.0

    llm = LLM(model_dir)
    tokenizer = llm.get_tokenizer()
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            served_ll = resp[0][0]
            ctx = tokenizer.encode(context, add_special_tokens=False)
            cont = tokenizer.encode(context + continuation, add_special_tokens=False)[len(ctx) :]
            out = llm.generate(ctx + cont, SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
            offline_ll = sum(out.prompt_logprobs[len(ctx) + i][t].logprob for i, t in enumerate(cont))
            assert abs(served_ll - offline_ll) < 1e-4, (context, continuation)
