"""`lee_cloze`: a built-in multiple-choice task made from the evaluation corpus, for when no task files are
at hand (offline machines, `tachyon validate`'s default). Each article of lee.cor becomes one question:

  context  its first sentence
  choices  what follows it (its second sentence) and three sentences drawn from other articles (seeded)

A model that follows the text picks the true next sentence; quantization damage shows as lost accuracy.
Scored like any custom multiple-choice task (acc, acc_norm), see tasks.py.
"""

from __future__ import annotations

import random
import re

from tachyon.corpus import EVALUATION_CORPUS, read_corpus
from tachyon.evals.tasks import MULTIPLE_CHOICE, Task

CLOZE_TASK = "lee_cloze"
NUM_CONTEXT_SENTENCES = 1
NUM_CHOICES = 4
MIN_WORDS = 5  # shorter fragments (datelines, "he said.") make poor choices
SEED = 1234
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def sentences(document: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(document.strip()) if len(s.split()) >= MIN_WORDS]


def cloze_task(documents: list[str] | None = None) -> Task:
    """One question per document with at least two sentences, in corpus order."""
    split = [sentences(d) for d in (documents if documents is not None else read_corpus(EVALUATION_CORPUS))]
    docs = []
    for i, sents in enumerate(split):
        if len(sents) <= NUM_CONTEXT_SENTENCES:
            continue
        rng = random.Random(SEED + i)
        others = [s for j, other in enumerate(split) if j != i for s in other[1:]]
        choices = rng.sample(others, NUM_CHOICES - 1)
        answer = rng.randrange(NUM_CHOICES)
        choices.insert(answer, sents[NUM_CONTEXT_SENTENCES])
        docs.append({"context": " ".join(sents[:NUM_CONTEXT_SENTENCES]), "choices": choices, "answer": answer})
    return Task(CLOZE_TASK, MULTIPLE_CHOICE, docs, prompt="{context}")
