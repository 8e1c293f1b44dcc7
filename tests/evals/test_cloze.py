"""The built-in `lee_cloze` task: one question per lee.cor article with two or more sentences, the true
next sentence among four distinct choices, and the same questions on every run."""

from __future__ import annotations

from tachyon.corpus import read_corpus
from tachyon.evals.cloze import NUM_CHOICES, cloze_task, sentences
from tachyon.evals.runner import CustomTask, resolve_task
from tachyon.evals.tasks import MULTIPLE_CHOICE


def test_each_question_continues_its_own_article():
    articles = read_corpus("lee")
    task = cloze_task()
    usable = [sentences(a) for a in articles if len(sentences(a)) >= 2]
    assert task.type == MULTIPLE_CHOICE and len(task.docs) == len(usable) == 48
    for doc, sents in zip(task.docs, usable):
        assert doc["context"] == sents[0]
        assert doc["choices"][doc["answer"]] == sents[1]
        assert len(doc["choices"]) == len(set(doc["choices"])) == NUM_CHOICES
        distractors = [c for i, c in enumerate(doc["choices"]) if i != doc["answer"]]
        assert not set(distractors) & set(sents)  # drawn from other articles
        assert task.context(doc) == doc["context"]


def test_questions_are_fixed_and_answers_spread():
    assert cloze_task().docs == cloze_task().docs
    answers = [doc["answer"] for doc in cloze_task().docs]
    assert set(answers) == set(range(NUM_CHOICES))


def test_sentence_split_drops_fragments():
    text = "Floods hit the city of Dresden on Friday. Water rose. Thousands of residents left their homes overnight."
    assert sentences(text) == [
        "Floods hit the city of Dresden on Friday.",
        "Thousands of residents left their homes overnight.",
    ]


def test_lee_cloze_is_a_builtin_task():
    task = resolve_task("lee_cloze")
    assert isinstance(task, CustomTask) and task.name == "lee_cloze"
