"""Writes a GGUF model (or any ModelSource) as a normal Hugging Face folder: config.json, safetensors,
tokenizer files with the chat template, generation_config.json, loadable by transformers and tachyon.
The `tachyon convert` command calls `convert_gguf`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sized

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from tachyon.models.loader import ModelLoadError, ModelSource, load_model_source

DEFAULT_MAX_SHARD_BYTES = 4 << 30


def convert_gguf(
    gguf_file: str, out_dir: str, *, overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> str:
    """Convert `gguf_file` into the HF folder `out_dir` (float32 weights) and return its absolute path."""
    _check_target(os.path.abspath(out_dir), overwrite)
    if not os.path.isfile(gguf_file):
        raise ModelLoadError(f"{gguf_file}: no such GGUF file")
    return save_model_source(
        load_model_source(gguf_file), out_dir, overwrite=overwrite, max_shard_bytes=max_shard_bytes
    )


def save_first_layers(model: str | None, num_layers: int, out_dir: str, *, overwrite: bool = False) -> str:
    """The model's first `num_layers` decoder layers, with its embeddings, final norm and LM head, as an HF
    folder: a draft model with the model's own tokenizer, or a shallow copy that tests calibrate in seconds."""
    source = load_model_source(model)
    if not 0 < num_layers <= source.hf_config.num_hidden_layers:
        raise ValueError(f"num_layers must be in [1, {source.hf_config.num_hidden_layers}], got {num_layers}")
    config = copy.deepcopy(source.hf_config)
    config.num_hidden_layers = num_layers
    weights = _FirstLayers(source, num_layers)
    return save_model_source(
        dataclasses.replace(source, hf_config=config, weights=weights), out_dir, overwrite=overwrite
    )


class _FirstLayers:
    """Re-iterable (name, tensor) pairs of a source without its decoder layers from `num_layers` on."""

    def __init__(self, source: ModelSource, num_layers: int) -> None:
        self.source, self.num_layers = source, num_layers

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.source.iter_weights():
            if not name.startswith("model.layers.") or int(name.split(".")[2]) < self.num_layers:
                yield name, tensor


def save_model_source(
    source: ModelSource,
    out_dir: str,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> str:
    """Write `source` as an HF folder and return its absolute path. Everything goes into a temporary
    sibling folder that replaces `out_dir` only at the end, so an interrupted run leaves no half-written
    model folder. Weights over `max_shard_bytes` are split into indexed shards."""
    out_dir = os.path.abspath(out_dir)
    _check_target(out_dir, overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        os.chmod(partial, 0o755)  # mkdtemp makes it owner-only
        source.hf_config.save_pretrained(partial)
        source.tokenizer.save_pretrained(partial)
        GenerationConfig(**source.generation_config).save_pretrained(partial)
        total = len(source.weights) if isinstance(source.weights, Sized) else None
        progress = tqdm(source.iter_weights(), total=total, desc=f"writing {os.path.basename(out_dir)}")
        write_safetensors(progress, partial, max_shard_bytes)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # still there only if something failed
    return out_dir


def _check_target(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ModelLoadError(f"{out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ModelLoadError(
            f"{out_dir}: folder exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )


def write_safetensors(weights: Iterable[tuple[str, torch.Tensor]], folder: str, max_shard_bytes: int) -> None:
    """Stream tensors into shards of at most `max_shard_bytes` (a larger single tensor gets a shard of its
    own), holding one tensor at a time in memory: `model.safetensors` when one shard holds everything,
    otherwise `model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`."""
    shards: list[list[str]] = []  # tensor names of each written shard
    shard = _ShardWriter(_part_path(folder, 0))
    total_bytes = 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if shard.num_bytes and shard.num_bytes + nbytes > max_shard_bytes:
            shards.append(shard.close())
            shard = _ShardWriter(_part_path(folder, len(shards)))
        shard.add(name, tensor)
        total_bytes += nbytes
    shards.append(shard.close())
    _name_shards(shards, folder, total_bytes)


def _part_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"part-{index}.safetensors")


class _ShardWriter:
    """One safetensors file written as its tensors arrive. The format puts the header (names, dtypes,
    offsets) first, so tensor bytes go to a side file at once and `close` writes the header, then appends
    them:

        [8-byte little-endian header length][JSON header, space-padded to 8][tensor bytes, in header order]
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = open(f"{path}.data", "wb")  # noqa: SIM115 - closed in close()
        self.header: dict[str, dict] = {}
        self.num_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # [nbytes], no copy
        self.data.write(raw.numpy().data)
        end = self.num_bytes + raw.numel()
        self.header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.num_bytes, end],
        }
        self.num_bytes = end

    def close(self) -> list[str]:
        """Write the file; returns its tensor names."""
        self.data.close()
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as out, open(f"{self.path}.data", "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 16 << 20)
        os.remove(f"{self.path}.data")
        return list(self.header)


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _name_shards(shards: list[list[str]], folder: str, total_bytes: int) -> None:
    if len(shards) == 1:
        os.replace(_part_path(folder, 0), os.path.join(folder, "model.safetensors"))
        return
    weight_map = {}
    for index, names in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(_part_path(folder, index), os.path.join(folder, file))
        weight_map.update(dict.fromkeys(names, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
