"""Calibration data: the offline default (disjoint from the evaluation slice), local files of each kind, chat
rows through the chat template, and clear errors."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tachyon.compress.calibration_data import calibration_samples, load_documents
from tachyon.corpus import read_corpus


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def test_default_is_the_background_slice_never_the_evaluation_one(tokenizer):
    documents = load_documents(None, tokenizer)
    assert len(documents) == 300 and not set(documents) & set(read_corpus("lee"))
    samples = calibration_samples(tokenizer, None, num_samples=5, max_seq_length=64)
    assert len(samples) == 5 and all(2 <= len(s) <= 64 for s in samples)
    assert samples == calibration_samples(tokenizer, None, num_samples=5, max_seq_length=64)  # seeded shuffle


def test_local_files_of_every_kind(tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first document\nstill first\n\nsecond document")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": "three"}]))
    pq.write_table(pa.table({"content": ["four", "five"]}), tmp_path / "d.parquet")
    assert load_documents(str(tmp_path / "a.txt"), tokenizer) == ["first document\nstill first", "second document"]
    assert load_documents(str(tmp_path / "b.jsonl"), tokenizer) == ["one", "two"]
    assert load_documents(str(tmp_path / "c.json"), tokenizer) == ["three"]
    assert load_documents(str(tmp_path / "d.parquet"), tokenizer) == ["four", "five"]


def test_chat_rows_are_rendered_through_the_chat_template(tokenizer, tmp_path):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": messages}) + "\n")
    [document] = load_documents(str(tmp_path / "chat.jsonl"), tokenizer)
    assert document == tokenizer.apply_chat_template(messages, tokenize=False) and "<|im_start|>" in document


def test_python_strings_are_a_dataset(tokenizer):
    samples = calibration_samples(tokenizer, ["a b c d e", "f g h"], num_samples=10, max_seq_length=8)
    assert sorted(len(s) for s in samples) == sorted(len(tokenizer.encode(t)) for t in ["a b c d e", "f g h"])


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("missing.txt", "no such file"),
        ("hf:no-such-dataset-xyz", "cannot load Hugging Face dataset"),
    ],
)
def test_bad_datasets_are_named(tokenizer, dataset, message):
    with pytest.raises(ValueError, match=message):
        calibration_samples(tokenizer, dataset, num_samples=1, max_seq_length=8)


def test_rows_without_text_are_refused(tokenizer, tmp_path):
    (tmp_path / "x.jsonl").write_text('{"label": 1}\n')
    with pytest.raises(ValueError, match=r"no text/content/prompt or messages column \(\['label'\]\)"):
        load_documents(str(tmp_path / "x.jsonl"), tokenizer)
    with pytest.raises(ValueError, match="need num_calibration_samples >= 1"):
        calibration_samples(tokenizer, None, num_samples=0, max_seq_length=8)
