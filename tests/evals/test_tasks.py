"""Custom tasks: contexts laid out as the harness lays them out, acc/acc_norm equal to the harness's HF
backend on the same questions, generate-until exact match equal to HF's greedy output, and clear errors."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tachyon.evals.tasks import GENERATE_UNTIL, MULTIPLE_CHOICE, evaluate_task, load_task
from tests.evals.conftest import EVAL_DATA, LM_EVAL_DATA
from tests.reference import hf_greedy


def test_multiple_choice_scores_equal_the_harness_hf_backend(eval_llm, hf_mc_results):
    task = load_task(str(LM_EVAL_DATA / "mc_smoke.jsonl"))  # defaults = the harness task's prompt and delimiter
    assert task.type == MULTIPLE_CHOICE
    result = evaluate_task(eval_llm, task)
    reference = hf_mc_results["results"]["tachyon_mc_smoke"]
    assert result.num_samples == 8
    assert result.metrics["acc"] == reference["acc,none"]
    assert result.metrics["acc_norm"] == reference["acc_norm,none"]


def test_fewshot_contexts_equal_the_harness_rendering(task_manager):
    harness = task_manager.load(["tachyon_mc_fewshot"])["tasks"]["tachyon_mc_fewshot"]
    harness.set_fewshot_seed(0)
    ours = load_task(str(EVAL_DATA / "mc_fewshot.yaml"))
    docs = list(harness.test_docs())
    assert len(docs) == len(ours.docs) == 8
    for doc, our_doc in zip(docs, ours.docs):
        assert ours.context(our_doc) == harness.fewshot_context(doc, num_fewshot=2)


def test_generate_until_exact_match_equals_hf_greedy(eval_llm, hf_model, model_dir):
    task = load_task(str(EVAL_DATA / "gen_smoke.jsonl"))
    assert task.type == GENERATE_UNTIL and task.until == ["\n"]
    task.max_gen_toks = 6
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hits = []
    for doc in task.docs:
        new = hf_greedy(hf_model, tokenizer.encode(task.context(doc)), task.max_gen_toks)
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]
        hits.append(text.strip() == doc["answer"])
    result = evaluate_task(eval_llm, task)
    assert result.metrics == {"exact_match": sum(hits) / len(hits)}
    assert result.primary == ["exact_match"]


def _write(path, lines) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", ['{"question": "q", "choices": ["a", "b"], "answer": 2}'], r"doc 0: `answer` must be a choice"),
        ("bad.jsonl", ['{"question": "q", "choices": ["a"], "answer": 0}'], "at least two non-empty strings"),
        ("bad.jsonl", ['{"question": "q", "choices": ["a", "b"], "answer": 0}', "{oops"], r"bad.jsonl:2: not valid"),
        ("bad.jsonl", ['{"text": "q", "choices": ["a", "b"], "answer": 0}'], "needs field 'question'"),
        ("bad.jsonl", ['{"question": "q", "answer": 3}'], "generate_until doc needs a string `answer`"),
        ("bad.yaml", ["name: x", "docs: []"], "the task has no docs"),
        ("bad.yaml", ["nme: x", "docs: [{question: q, answer: a}]"], r"unknown setting\(s\) \['nme'\]"),
        ("bad.yaml", ["data: x.jsonl", "docs: [{question: q, answer: a}]"], "exactly one of `docs:`"),
        ("bad.yaml", ["type: ranking", "docs: [{question: q, answer: a}]"], "type must be multiple_choice"),
        ("bad.csv", ["question,answer"], "expected .jsonl, .json, .yaml or .yml"),
    ],
)
def test_bad_task_files_are_refused_with_the_reason(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        load_task(_write(tmp_path / name, content))


def test_missing_task_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_yaml_inline_docs_and_settings(tmp_path):
    docs = [{"q": "2+2", "answer": "4"}]
    settings = [f"docs: {json.dumps(docs)}", "prompt: '{q} ='", "until: '.'", "max_gen_toks: 4"]
    path = _write(tmp_path / "t.yaml", settings)
    task = load_task(path)
    assert (task.name, task.type, task.until, task.max_gen_toks) == ("t", GENERATE_UNTIL, ["."], 4)
    assert task.context(task.docs[0]) == "2+2 ="
