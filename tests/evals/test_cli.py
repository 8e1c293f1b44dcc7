"""`tachyon eval`: a run over the three local task kinds prints a table and writes JSON atomically with the
same numbers the library computes; bad input fails before any model loads, with a message naming it."""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest

from tachyon.cli import build_parser, main
from tachyon.corpus import evaluation_text
from tachyon.evals.perplexity import perplexity
from tachyon.evals.tasks import evaluate_task, load_task
from tests.evals.conftest import EVAL_DATA, KV_CACHE_BYTES, LM_EVAL_DATA

ENGINE = ["--kv-cache-memory", str(KV_CACHE_BYTES), "--max-model-len", "1024"]


def test_eval_prints_a_table_and_writes_json(model_dir, eval_llm, tmp_path, capsys):
    mc, gen = str(LM_EVAL_DATA / "mc_smoke.jsonl"), str(EVAL_DATA / "gen_smoke.yaml")
    out = tmp_path / "reports" / "r.json"
    argv = ["eval", model_dir, "--task", "lee", "--task", mc, "--task", gen, "--limit", "2", "--window", "64"]
    assert main([*argv, "--stride", "48", "--output", str(out), *ENGINE]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["task", "kind", "metric", "value", "samples"] in rows
    assert {("lee", "ppl", "↓"), ("mc_smoke", "acc", "↑"), ("gen_smoke", "exact_match", "↑")} <= {
        (r[0], r[2], r[3]) for r in rows if len(r) == 6
    }
    assert os.listdir(out.parent) == ["r.json"]  # no temporary file left behind
    report = json.loads(out.read_text())
    assert report["models"] == {"model": model_dir}
    assert report["options"] == {"limit": 2, "max_length": 64, "stride": 48, "include_path": None}
    lee, mc_result, gen_result = report["results"]["model"]
    expected = perplexity(eval_llm, evaluation_text(2), max_length=64, stride=48)
    assert lee["metrics"] == pytest.approx(expected.metrics(), rel=1e-6)
    assert lee["info"]["num_tokens"] == expected.num_tokens and lee["num_samples"] == 2
    assert mc_result["metrics"] == evaluate_task(eval_llm, load_task(mc), limit=2).metrics
    assert gen_result["metrics"] == evaluate_task(eval_llm, load_task(gen), limit=2).metrics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "no/such/file.jsonl"], "task file no/such/file.jsonl does not exist"),
        (["--task", "wikitext"], "unknown task 'wikitext': not a file, not a built-in task \\(lee, lee_cloze\\)"),
        (["--task", "lee", "--baseline", "a"], "--baseline and --candidate go together"),
        (["m", "--task", "lee", "--baseline", "a", "--candidate", "b"], "either MODEL or --baseline"),
        (["--task", "lee", "--baseline", "/no/such/model", "--candidate", "x"], "model /no/such/model does not"),
        (["--task", "lee", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "lee", "--include-path", "/no/such/dir"], "--include-path /no/such/dir is not a folder"),
    ],
)
def test_bad_input_fails_fast_with_a_clear_error(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err


def test_help_explains_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    flags = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    assert {"--task", "--limit", "--output", "--window", "--stride", "--baseline", "--candidate"} <= {
        s for a in flags for s in a.option_strings
    }
    assert all(a.help for a in flags)
    assert "lm-eval:NAME" in sub.format_help()
