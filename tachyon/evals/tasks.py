"""Small custom tasks: a JSONL or YAML file of questions, scored on the engine or a server.

Called by `tachyon eval --task FILE` and by the built-in `lee_cloze` task (cloze.py). Two kinds, both laid
out as lm-evaluation-harness lays out a prompt (description, then each few-shot example with its answer,
then the question):

  context      = description + (prompt(shot) + target_delimiter + answer(shot) + fewshot_delimiter) * shots
                 + prompt(doc)
  multiple_choice  loglikelihood of target_delimiter + choice for each choice; acc = argmax is the answer,
                   acc_norm = argmax of loglikelihood / len(choice) (characters, as the harness computes it),
                   acc_bytes = the same over the choice's UTF-8 bytes
  generate_until   greedy generation cut at the first stop string; exact_match = stripped output equals
                   the stripped answer

A JSONL file holds only the docs (defaults for the rest); a YAML file holds the settings and either the docs
(`docs:`) or a JSONL file (`data:`, relative to the YAML file). See docs/evals.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tachyon.evals.eval_model import as_eval_model
from tachyon.evals.results import TaskResult
from tachyon.evals.scoring import encode, encode_pair, generate_greedy, score_tokens

if TYPE_CHECKING:
    from tachyon import LLM
    from tachyon.evals.eval_model import EvalModel

MULTIPLE_CHOICE = "multiple_choice"
GENERATE_UNTIL = "generate_until"
DEFAULT_PROMPT = "Question: {question}\nAnswer:"
_SETTINGS = {
    "name",
    "type",
    "description",
    "prompt",
    "target_delimiter",
    "fewshot_delimiter",
    "fewshot",
    "until",
    "max_gen_toks",
    "docs",
    "data",
}


@dataclass
class Task:
    name: str
    type: str
    docs: list[dict]
    prompt: str = DEFAULT_PROMPT  # str.format template over a doc's fields
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot: list[dict] = field(default_factory=list)
    until: list[str] = field(default_factory=lambda: ["\n"])  # generate_until stop strings
    max_gen_toks: int = 32

    def context(self, doc: dict) -> str:
        shots = "".join(
            self.render(shot) + self.target_delimiter + self.answer_text(shot) + self.fewshot_delimiter
            for shot in self.fewshot
        )
        return self.description + shots + self.render(doc)

    def render(self, doc: dict) -> str:
        return self.prompt.format(**doc)

    def answer_text(self, doc: dict) -> str:
        return doc["choices"][doc["answer"]] if self.type == MULTIPLE_CHOICE else doc["answer"]


def load_task(path: str) -> Task:
    """A task from a .jsonl, .json, .yaml or .yml file; ValueError naming the file and the doc on bad input."""
    if not os.path.isfile(path):
        raise ValueError(f"task file {path} does not exist")
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext in (".jsonl", ".json"):
        spec = {"docs": _read_jsonl(path)}
    elif ext in (".yaml", ".yml"):
        spec = _read_yaml(path)
    else:
        raise ValueError(f"task file {path}: expected .jsonl, .json, .yaml or .yml")
    return _build_task(spec, stem, path)


def _read_jsonl(path: str) -> list[dict]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for num, line in enumerate(f, 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{num}: not valid JSON ({e.msg})") from e
    return docs


def _read_yaml(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            spec = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping of task settings at the top level")
    unknown = set(spec) - _SETTINGS
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(_SETTINGS)}")
    if ("docs" in spec) == ("data" in spec):
        raise ValueError(f"{path}: give exactly one of `docs:` (inline) or `data:` (a JSONL file)")
    if "data" in spec:
        spec["docs"] = _read_jsonl(os.path.join(os.path.dirname(os.path.abspath(path)), spec.pop("data")))
    return spec


def _build_task(spec: dict, default_name: str, path: str) -> Task:
    docs, fewshot = spec.get("docs") or [], spec.get("fewshot") or []
    if not docs:
        raise ValueError(f"{path}: the task has no docs")
    inferred = MULTIPLE_CHOICE if isinstance(docs[0], dict) and "choices" in docs[0] else GENERATE_UNTIL
    kind = spec.get("type") or inferred
    if kind not in (MULTIPLE_CHOICE, GENERATE_UNTIL):
        raise ValueError(f"{path}: type must be {MULTIPLE_CHOICE} or {GENERATE_UNTIL}, got {kind!r}")
    until = spec.get("until", ["\n"])
    task = Task(
        name=str(spec.get("name") or default_name),
        type=kind,
        docs=docs,
        prompt=spec.get("prompt", DEFAULT_PROMPT),
        description=spec.get("description", ""),
        target_delimiter=spec.get("target_delimiter", " "),
        fewshot_delimiter=spec.get("fewshot_delimiter", "\n\n"),
        fewshot=fewshot,
        until=[until] if isinstance(until, str) else list(until),
        max_gen_toks=int(spec.get("max_gen_toks", 32)),
    )
    for where, group in (("doc", docs), ("fewshot example", fewshot)):
        for i, doc in enumerate(group):
            _check_doc(task, doc, f"{path}: {where} {i}")
    return task


def _check_doc(task: Task, doc, where: str) -> None:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    try:
        task.render(doc)
    except (KeyError, IndexError) as e:
        raise ValueError(f"{where}: the prompt template needs field {e} (template {task.prompt!r})") from e
    if task.type == GENERATE_UNTIL:
        if not isinstance(doc.get("answer"), str):
            raise ValueError(f"{where}: a generate_until doc needs a string `answer`")
        return
    choices, answer = doc.get("choices"), doc.get("answer")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise ValueError(f"{where}: `choices` must be a list of at least two non-empty strings")
    if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices)):
        raise ValueError(f"{where}: `answer` must be a choice index in [0, {len(choices)}), got {answer!r}")


def evaluate_task(
    model: LLM | EvalModel, task: Task, limit: int | None = None, max_length: int | None = None
) -> TaskResult:
    """Scores the first `limit` docs (all if None) in one batch; max_length bounds the tokens fed per
    request (default: the model's max_model_len - 2, the most a loglikelihood request may use)."""
    model = as_eval_model(model)
    docs = task.docs[:limit] if limit is not None else task.docs
    max_length = max_length or model.max_model_len - 2
    if task.type == MULTIPLE_CHOICE:
        metrics = _multiple_choice(model, task, docs, max_length)
    else:
        metrics = _generate_until(model, task, docs, max_length)
    info = {"num_fewshot": len(task.fewshot)}
    primary = ["acc", "acc_norm"] if task.type == MULTIPLE_CHOICE else ["exact_match"]
    return TaskResult(task.name, task.type, metrics, {m: True for m in metrics}, len(docs), info, primary)


def _multiple_choice(model: EvalModel, task: Task, docs: list[dict], max_length: int) -> dict[str, float]:
    tokenizer = model.get_tokenizer()
    requests = [
        encode_pair(tokenizer, task.context(doc), task.target_delimiter + choice)
        for doc in docs
        for choice in doc["choices"]
    ]
    scores = iter(score_tokens(model, requests, max_length, use_tqdm=True))
    acc, acc_norm, acc_bytes = [], [], []
    for doc in docs:
        lls = np.array([next(scores).logprob for _ in doc["choices"]])
        num_chars = np.array([float(len(c)) for c in doc["choices"]])
        num_bytes = np.array([float(len(c.encode("utf-8"))) for c in doc["choices"]])
        acc.append(float(np.argmax(lls) == doc["answer"]))
        acc_norm.append(float(np.argmax(lls / num_chars) == doc["answer"]))
        acc_bytes.append(float(np.argmax(lls / num_bytes) == doc["answer"]))
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "acc_bytes": float(np.mean(acc_bytes))}


def _generate_until(model: EvalModel, task: Task, docs: list[dict], max_length: int) -> dict[str, float]:
    tokenizer = model.get_tokenizer()
    prompts = [encode(tokenizer, task.context(doc)) for doc in docs]
    outputs = generate_greedy(model, prompts, task.until, task.max_gen_toks, max_length, use_tqdm=True)
    hits = [float(out.strip() == doc["answer"].strip()) for out, doc in zip(outputs, docs)]
    return {"exact_match": float(np.mean(hits))}
