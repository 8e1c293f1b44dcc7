"""Calibration text -> token id samples for `oneshot`. The default works offline: the Lee news corpus's
background slice (`lee_background.cor`, 300 articles), disjoint from the `lee.cor` slice that perplexity
evaluates on. Otherwise a local .txt / .jsonl / .json / .parquet file, a Hugging Face dataset by name
(`hf:NAME[:CONFIG[:SPLIT]]` or a bare `owner/name`), or Python strings. Rows with a `messages` column are
rendered through the tokenizer's chat template, as a chat model sees them.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence

from tachyon.corpus import calibration_documents
from tachyon.hf_datasets import load_hf_dataset

__all__ = ["DEFAULT_DATASET", "calibration_samples", "load_documents"]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "lee_background"
_TEXT_COLUMNS = ("text", "content", "prompt")


def calibration_samples(
    tokenizer, dataset: str | Sequence[str] | None, num_samples: int, max_seq_length: int, seed: int = 42
) -> list[list[int]]:
    """Up to `num_samples` token id lists of at most `max_seq_length` tokens, one per document (shuffled with
    `seed`, truncated, never packed, as LLM Compressor tokenizes calibration sets)."""
    if num_samples < 1 or max_seq_length < 2:
        raise ValueError(
            f"need num_calibration_samples >= 1 and max_seq_length >= 2, got {num_samples}, {max_seq_length}"
        )
    documents = [d for d in load_documents(dataset, tokenizer) if d.strip()]
    if not documents:
        raise ValueError(f"calibration dataset {_describe(dataset)} has no non-empty text")
    random.Random(seed).shuffle(documents)
    samples = [tokenizer.encode(doc, truncation=True, max_length=max_seq_length) for doc in documents[:num_samples]]
    if len(samples) < num_samples:
        logger.info(
            "calibration: %s has %d documents, fewer than the %d asked for; using all",
            _describe(dataset),
            len(samples),
            num_samples,
        )
    return [s for s in samples if len(s) >= 2]


def load_documents(dataset: str | Sequence[str] | None, tokenizer) -> list[str]:
    """The dataset's documents as text (chat rows rendered through `tokenizer`'s chat template)."""
    if dataset is None or dataset == DEFAULT_DATASET:
        return calibration_documents()
    if not isinstance(dataset, str):
        return list(dataset)
    path = os.path.expanduser(dataset)
    if os.path.isfile(path):
        return _file_documents(path, tokenizer)
    if dataset.startswith("hf:") or "/" in dataset and not os.path.exists(path):
        data = load_hf_dataset(dataset.removeprefix("hf:"), default_split="train")
        return _rows_to_text(list(data), tokenizer, dataset)
    raise ValueError(
        f"calibration dataset {dataset!r}: no such file; give a .txt/.jsonl/.json/.parquet file, "
        f"hf:NAME[:CONFIG[:SPLIT]] for a Hugging Face dataset, or omit it for the built-in {DEFAULT_DATASET}"
    )


def _file_documents(path: str, tokenizer) -> list[str]:
    """.txt: documents separated by blank lines; .jsonl / .json / .parquet: rows with a text or messages column."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with open(path, encoding="utf-8") as f:
            return [doc.strip() for doc in f.read().split("\n\n")]
    if ext == ".jsonl":
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif ext == ".json":
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    elif ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError(f"calibration file {path}: reading .parquet needs pyarrow: pip install pyarrow") from e
        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"calibration file {path}: unsupported extension {ext!r}; use .txt, .jsonl, .json or .parquet")
    return _rows_to_text(rows, tokenizer, path)


def _rows_to_text(rows: list, tokenizer, source: str) -> list[str]:
    documents = []
    for row in rows:
        if isinstance(row, str):
            documents.append(row)
        elif isinstance(row, dict) and "messages" in row:
            documents.append(tokenizer.apply_chat_template(row["messages"], tokenize=False))
        elif isinstance(row, dict) and (column := next((c for c in _TEXT_COLUMNS if c in row), None)):
            documents.append(str(row[column]))
        else:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"calibration data {source}: a row has no {'/'.join(_TEXT_COLUMNS)} or messages column ({found})"
            )
    return documents


def _describe(dataset: str | Sequence[str] | None) -> str:
    return repr(dataset) if isinstance(dataset, str) or dataset is None else f"({len(dataset)} strings)"
