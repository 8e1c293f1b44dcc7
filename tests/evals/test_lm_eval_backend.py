"""The `tachyon` lm-evaluation-harness backend against the harness's own `hf` backend on the same weights:
same acc/acc_norm on the local MC task, per-request loglikelihoods within 1e-3, rolling loglikelihoods
within 1e-3 relative, identical greedy generations; and lm-eval's command line through our wrapper."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from tachyon.corpus import evaluation_text  # noqa: E402
from tachyon.evals.lm_eval_backend import TachyonLM, evaluate_harness_task  # noqa: E402
from tests.evals.conftest import KV_CACHE_BYTES  # noqa: E402


def test_backend_is_registered_beside_the_harness_models():
    assert get_model("tachyon") is TachyonLM
    assert get_model("hf") is HFLM


def test_multiple_choice_equals_the_hf_backend(model_dir, task_manager, hf_mc_results):
    ours = lm_eval.simple_evaluate(
        model="tachyon",
        model_args=f"pretrained={model_dir},kv_cache_memory={KV_CACHE_BYTES},max_model_len=1024",
        tasks=["tachyon_mc_smoke"],
        task_manager=task_manager,
        log_samples=True,
        bootstrap_iters=0,
    )
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tachyon_mc_smoke"][metric] == hf_mc_results["results"]["tachyon_mc_smoke"][metric]
    ours_samples = sorted(ours["samples"]["tachyon_mc_smoke"], key=lambda s: s["doc_id"])
    hf_samples = sorted(hf_mc_results["samples"]["tachyon_mc_smoke"], key=lambda s: s["doc_id"])
    assert len(ours_samples) == len(hf_samples) == 8
    for our_sample, hf_sample in zip(ours_samples, hf_samples):
        assert our_sample["arguments"] == hf_sample["arguments"]
        for (our_ll, our_greedy), (hf_ll, hf_greedy) in zip(
            (r[0] for r in our_sample["resps"]), (r[0] for r in hf_sample["resps"])
        ):
            assert abs(our_ll - hf_ll) < 1e-3 and our_greedy == hf_greedy


def test_loglikelihood_rolling_equals_the_hf_backend(eval_llm, hf_lm):
    texts = [evaluation_text(2), "Hello, world."]
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    hf_short = HFLM(pretrained=hf_lm.model, tokenizer=hf_lm.tokenizer, max_length=64, batch_size=16)
    ours = TachyonLM(llm=eval_llm, max_length=64).loglikelihood_rolling(requests, disable_tqdm=True)
    reference = hf_short.loglikelihood_rolling(requests, disable_tqdm=True)
    assert ours == pytest.approx(reference, rel=1e-3)


def test_generate_until_equals_the_hf_backend(eval_llm, hf_lm):
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
    contexts = ["Question: What is the capital of France?\nAnswer:", "The three primary colours are"]
    requests = [Instance("generate_until", {}, (c, dict(gen_kwargs)), i) for i, c in enumerate(contexts)]
    ours = TachyonLM(llm=eval_llm).generate_until(requests, disable_tqdm=True)
    assert ours == hf_lm.generate_until(requests, disable_tqdm=True)


def test_evaluate_harness_task_reports_metrics_by_name(eval_llm, task_manager, hf_mc_results):
    (result,) = evaluate_harness_task(eval_llm, "tachyon_mc_smoke", limit=4, task_manager=task_manager)
    assert (result.name, result.kind, result.num_samples) == ("tachyon_mc_smoke", "lm_eval", 4)
    assert set(result.metrics) == {"acc", "acc_norm"} and result.higher_is_better == {"acc": True, "acc_norm": True}


def test_bad_model_args_are_refused(eval_llm):
    with pytest.raises(ValueError, match=r"unknown model_args for tachyon: \['temprature'\]"):
        TachyonLM(pretrained="x", temprature=0.5)
    with pytest.raises(ValueError, match="not both"):
        TachyonLM(pretrained="x", llm=eval_llm)


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_tachyon_model(model_dir, lm_eval_task_dir, tmp_path):
    """What a user types: lm-eval's own flags, through the wrapper that registers the backend."""
    args = [
        *("--model", "tachyon"),
        *("--model_args", f"pretrained={model_dir},kv_cache_memory={KV_CACHE_BYTES},max_model_len=1024"),
        *("--tasks", "tachyon_mc_smoke", "--include_path", lm_eval_task_dir, "--limit", "2"),
        *("--output_path", str(tmp_path / "out")),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tachyon.evals.lm_eval_cli", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(report.read_text())["results"]["tachyon_mc_smoke"]
    assert 0.0 <= results["acc,none"] <= 1.0
