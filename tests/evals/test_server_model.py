"""Evaluation against a server: a `tachyon serve` process scores perplexity, a multiple-choice task and a
generate-until task exactly as the in-process engine does (same token ids in, same numbers out), through
the library and through `tachyon eval URL`; harness tasks, which need the engine, are refused up front."""

from __future__ import annotations

import json

import pytest

from tachyon.cli import main
from tachyon.corpus import evaluation_text
from tachyon.evals.perplexity import perplexity
from tachyon.evals.server_model import ServerModel
from tachyon.evals.tasks import evaluate_task, load_task
from tachyon.validate.serving import running_server
from tests.evals.conftest import EVAL_DATA, KV_CACHE_BYTES, LM_EVAL_DATA

SERVER_FLAGS = ["--kv-cache-memory", str(KV_CACHE_BYTES), "--max-model-len", "2048"]


@pytest.fixture(scope="module")
def server_url(model_dir, tmp_path_factory):
    with running_server(model_dir, SERVER_FLAGS, str(tmp_path_factory.mktemp("serve") / "serve.log")) as url:
        yield url


def test_server_scores_equal_the_engine(server_url, eval_llm):
    server = ServerModel(server_url)
    assert server.max_model_len == eval_llm.engine.max_model_len == 2048
    assert server.get_tokenizer().bos_token is None  # SmolLM2's tokenizer adds no BOS
    text = evaluation_text(2)
    ours, reference = perplexity(server, text, 64, 48), perplexity(eval_llm, text, 64, 48)
    assert (ours.num_tokens, ours.num_windows) == (reference.num_tokens, reference.num_windows)
    assert ours.nll_sum == pytest.approx(reference.nll_sum, rel=1e-5)
    for path in (LM_EVAL_DATA / "mc_smoke.jsonl", EVAL_DATA / "gen_smoke.jsonl"):
        task = load_task(str(path))
        task.max_gen_toks = 6
        assert evaluate_task(server, task).metrics == evaluate_task(eval_llm, task).metrics


def test_eval_command_takes_a_url(server_url, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["eval", server_url, "--task", "lee", "--limit", "1", "--window", "64", "--output", str(out)]
    assert main(argv) == 0
    assert f"## model: {server_url}" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["results"]["model"]
    assert result["name"] == "lee" and result["metrics"]["ppl"] > 1


def test_harness_tasks_on_a_url_are_refused_before_any_request(capsys):
    assert main(["eval", "http://127.0.0.1:9", "--task", "lm-eval:tachyon_mc_smoke"]) == 2
    assert "lm_eval --model local-completions" in capsys.readouterr().err
