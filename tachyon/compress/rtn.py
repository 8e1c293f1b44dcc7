"""Data-free compression: every decoder Linear weight (q/k/v/o/gate/up/down) is pruned to 2:4 by
magnitude (optional), then quantized round-to-nearest (RTN) with a preset scheme (optional), and the model
is written as a compressed-tensors checkpoint that vLLM, transformers and tachyon load. Users and the
`tachyon compress` command call `compress_model`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PretrainedConfig

from tachyon.models.convert import DEFAULT_MAX_SHARD_BYTES, _check_target, write_safetensors
from tachyon.models.loader import ModelSource, load_model_source
from tachyon.quantization.compressed_tensors import compress_weight, quantization_config
from tachyon.quantization.quantize import check_group_size
from tachyon.quantization.schemes import QuantScheme, create_scheme
from tachyon.quantization.sparsity import prune_2_4, sparsity_config

__all__ = ["compress_model", "is_decoder_linear"]

logger = logging.getLogger(__name__)

_DECODER_LINEAR = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj")
_NUM_LINEARS_PER_LAYER = 7


def compress_model(
    model: str | None,
    scheme: str | None,
    output_dir: str,
    *,
    sparsity: str | None = None,
    overwrite: bool = False,
    ignore: tuple[str, ...] | list[str] = ("lm_head",),
    group_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Compress `model` (None: the default model; an HF folder, .gguf file or Hub id) with the preset
    `scheme` and/or `sparsity` "2:4" and write it to `output_dir`; returns its absolute path. `ignore` lists
    modules (names or `re:` patterns) left alone; `group_size` overrides a grouped scheme's 128 (-1: per
    channel); `dtype` casts dense tensors and scales (default: as stored). Embeddings and lm_head are never
    touched."""
    if scheme is None and sparsity is None:
        raise ValueError("nothing to do: give a quantization scheme, --sparsity 2:4, or both")
    if sparsity not in (None, "2:4"):
        raise ValueError(f"sparsity {sparsity!r} is not supported; supported: 2:4")
    quant_scheme = _checked_scheme(scheme, group_size) if scheme is not None else None
    output_dir = os.path.abspath(output_dir)
    _check_target(output_dir, overwrite)
    source = load_model_source(model)
    _check_shapes(source.hf_config, quant_scheme)
    stats = {"zeros": 0, "total": 0}
    weights = _compressed_weights(source, quant_scheme, sparsity is not None, ignore, dtype, stats)

    def config() -> dict:  # after the weights are written: the sparsity share is known then
        sparse = sparsity_config(ignore, stats["zeros"] / max(stats["total"], 1)) if sparsity else None
        return quantization_config(quant_scheme, ignore, sparse)

    return _save_atomically(source, config, weights, output_dir, dtype)


def is_decoder_linear(module: str, ignore: tuple[str, ...] | list[str] = ()) -> bool:
    """Whether RTN quantizes `module` (a Linear's name without `.weight`)."""
    ignored = any(module == i or (i.startswith("re:") and re.match(i[3:], module)) for i in ignore)
    return not ignored and _DECODER_LINEAR.fullmatch(module) is not None


def _checked_scheme(name: str, group_size: int | None) -> QuantScheme:
    scheme = create_scheme(name, group_size=group_size)
    if scheme.needs_calibration:
        raise ValueError(
            f"{scheme.name} has a static input-activation scale that needs calibration data, which data-free "
            "RTN does not have; use FP8_DYNAMIC (same fp8 weights, scales computed per token at run time)"
        )
    return scheme


def _check_shapes(hf_config: PretrainedConfig, scheme: QuantScheme | None) -> None:
    """Refuse a group size that does not divide every Linear's in_features, before any work."""
    if scheme is None or scheme.weights.strategy != "group":
        return
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    in_features = {
        "q/k/v/gate/up_proj": hf_config.hidden_size,
        "o_proj": hf_config.num_attention_heads * head_dim,
        "down_proj": hf_config.intermediate_size,
    }
    for name, size in in_features.items():
        check_group_size(size, scheme.weights.group_size, f"{scheme.name} on {name}")


def _compressed_weights(
    source: ModelSource,
    scheme: QuantScheme | None,
    prune: bool,
    ignore: tuple[str, ...] | list[str],
    dtype: torch.dtype | None,
    stats: dict[str, int],
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors, one at a time: decoder Linears pruned and/or quantized, everything else as
    stored. Counts the pruned Linears' zeros into `stats`."""
    num_layers = source.hf_config.num_hidden_layers
    done: dict[str, int] = {}  # layer index -> Linears compressed
    desc = " + ".join(([scheme.name] if scheme else []) + (["2:4"] if prune else []))
    with tqdm(total=num_layers, desc=f"RTN {desc}", unit="layer") as progress:
        for name, tensor in source.iter_weights():
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            module = name.removesuffix(".weight")
            if not (name.endswith(".weight") and is_decoder_linear(module, ignore)):
                yield name, tensor
                continue
            if prune:
                tensor = prune_2_4(tensor)
                stats["zeros"] += int((tensor == 0).sum())
                stats["total"] += tensor.numel()
            stored = compress_weight(tensor, scheme) if scheme is not None else {"weight": tensor}
            for suffix, value in stored.items():
                yield f"{module}.{suffix}", value
            layer = _DECODER_LINEAR.fullmatch(module).group(1)
            done[layer] = done.get(layer, 0) + 1
            if done[layer] == _NUM_LINEARS_PER_LAYER:
                progress.update(1)


def _save_atomically(
    source: ModelSource,
    config: Callable[[], dict],
    weights: Iterator[tuple[str, torch.Tensor]],
    output_dir: str,
    dtype: torch.dtype | None,
) -> str:
    """convert.save_model_source's pattern: write into a hidden sibling folder, rename it into place at the
    end, so an interrupted run leaves no output folder."""
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    try:
        os.chmod(partial, 0o755)
        write_safetensors(weights, partial, DEFAULT_MAX_SHARD_BYTES)
        _write_config(source.hf_config, config(), partial, dtype)
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
