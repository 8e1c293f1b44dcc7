"""Hugging Face datasets by name, for `tachyon bench --data hf:...` prompts and `tachyon eval` corpora:
`NAME[:CONFIG[:SPLIT]]`, where NAME may also be a local folder of data files (no hub needed)."""

from __future__ import annotations


def load_hf_dataset(spec: str, default_split: str):
    """The `datasets.Dataset` that `spec` names; a ValueError saying why when it cannot be loaded."""
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        import datasets
    except ImportError as e:
        raise ValueError("Hugging Face datasets need the `datasets` package: pip install datasets") from e
    try:
        return datasets.load_dataset(name, config or None, split=split or default_split)
    except Exception as e:  # offline, unknown name, config or split: all the user's to fix
        raise ValueError(f"cannot load Hugging Face dataset {spec!r}: {type(e).__name__}: {e}") from e
