"""Writing a compressed checkpoint: the tensor stream into safetensors shards, config.json with its
`quantization_config`, tokenizer, generation config and the recipe, all into a hidden sibling folder that is
renamed into place at the end, so an interrupted run leaves no output folder. `oneshot` calls `save_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import torch
from transformers import GenerationConfig, PretrainedConfig

from tachyon.models.convert import DEFAULT_MAX_SHARD_BYTES, write_safetensors
from tachyon.models.loader import ModelSource

__all__ = ["save_checkpoint"]

logger = logging.getLogger(__name__)


def save_checkpoint(
    source: ModelSource,
    config: Callable[[], dict],
    weights: Iterator[tuple[str, torch.Tensor]],
    output_dir: str,
    dtype: torch.dtype | None,
    extra_files: dict[str, str] | None = None,
) -> str:
    """Write `weights` (consumed lazily: the compression happens while this writes), then `config()`'s
    quantization_config (known once the weights are written) and `extra_files` (name -> text)."""
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    try:
        os.chmod(partial, 0o755)
        write_safetensors(weights, partial, DEFAULT_MAX_SHARD_BYTES)
        _write_config(source.hf_config, config(), partial, dtype)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(partial, name), "w", encoding="utf-8") as f:
                f.write(text)
        source.tokenizer.save_pretrained(partial)
        GenerationConfig(**source.generation_config).save_pretrained(partial)
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.replace(partial, output_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # still there only if something failed
    logger.info("wrote %s", output_dir)
    return output_dir


def _write_config(hf_config: PretrainedConfig, quant_config: dict, folder: str, dtype: torch.dtype | None) -> None:
    hf_config.save_pretrained(folder)
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["quantization_config"] = quant_config
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
