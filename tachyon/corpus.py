"""Text for perplexity and calibration: the built-in Lee news corpus that ships inside gensim's wheel (read
straight from the zip), and Hugging Face datasets by name when a network (or the datasets cache) is there.

`make install` downloads the wheel (never installs it) into `.venv/corpora`; perplexity (`lee`) and, later,
compression calibration read it through `read_corpus`. The two slices are disjoint files:

  lee.cor             50 articles  -> evaluation (the `lee` perplexity task)
  lee_background.cor 300 articles  -> calibration (never evaluated on)
"""

from __future__ import annotations

import glob
import os
import sys
import zipfile

from tachyon.hf_datasets import load_hf_dataset

GENSIM_WHEEL = "gensim-4.4.0-*.whl"
CORPUS_DIR_ENV = "TACHYON_CORPUS_DIR"
CORPORA = {"lee": "lee.cor", "lee_background": "lee_background.cor"}
EVALUATION_CORPUS = "lee"
CALIBRATION_CORPUS = "lee_background"
_MEMBER = "gensim/test/test_data/{}"
TEXT_COLUMN = "text"
FETCH_HINT = "python -m pip download --no-deps --only-binary=:all: gensim==4.4.0 -d {}"


def corpus_dir() -> str:
    """Where the gensim wheel is looked for: $TACHYON_CORPUS_DIR, else `<venv>/corpora`."""
    return os.environ.get(CORPUS_DIR_ENV) or os.path.join(sys.prefix, "corpora")


def corpus_wheel() -> str:
    """Path of the downloaded gensim wheel; FileNotFoundError saying how to fetch it if absent."""
    folder = corpus_dir()
    found = sorted(glob.glob(os.path.join(folder, GENSIM_WHEEL)))
    if not found:
        raise FileNotFoundError(
            f"the text corpus (gensim 4.4.0's wheel) is not in {folder}; run `make install`, or fetch it with "
            f"`{FETCH_HINT.format(folder)}` (set ${CORPUS_DIR_ENV} to use another folder)"
        )
    return found[-1]


def read_corpus(name: str = EVALUATION_CORPUS) -> list[str]:
    """The corpus' documents, one per line in the file, in order. The files are Latin-1 (one '£')."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    with zipfile.ZipFile(corpus_wheel()) as wheel:
        raw = wheel.read(_MEMBER.format(CORPORA[name]))
    return [line.strip() for line in raw.decode("latin-1").splitlines() if line.strip()]


def evaluation_text(num_docs: int | None = None) -> str:
    """The evaluation slice (lee.cor), its first `num_docs` documents joined by blank lines."""
    docs = read_corpus(EVALUATION_CORPUS)
    return "\n\n".join(docs[:num_docs] if num_docs is not None else docs)


def calibration_documents(num_docs: int | None = None) -> list[str]:
    """The calibration slice (lee_background.cor), disjoint from the evaluation slice."""
    docs = read_corpus(CALIBRATION_CORPUS)
    return docs[:num_docs] if num_docs is not None else docs


def hf_dataset_documents(spec: str) -> list[str]:
    """The `text` column of a Hugging Face dataset, one document per row (kept as is, empty rows too, as in
    HF's perplexity recipe); `spec` is NAME[:CONFIG[:SPLIT]], split `test` by default, e.g.
    `wikitext:wikitext-2-raw-v1:test`. NAME may be a local folder of data files."""
    data = load_hf_dataset(spec, default_split="test")
    if TEXT_COLUMN not in data.column_names:
        raise ValueError(f"dataset {spec!r} has no {TEXT_COLUMN!r} column (columns: {', '.join(data.column_names)})")
    return list(data[TEXT_COLUMN])
