"""`oneshot`: compress a model with a recipe in one pass over calibration data and write a compressed-tensors
checkpoint (with its recipe.yaml) that Tachyon, vLLM and HF transformers load. `compress_model` is the
data-free shortcut (round-to-nearest and/or magnitude 2:4) behind `tachyon compress --scheme/--sparsity`.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tachyon.compress.calibration_data import calibration_samples
from tachyon.compress.checkpoint import save_checkpoint
from tachyon.compress.modifiers import MagnitudePruningModifier, Modifier, QuantizationModifier
from tachyon.compress.pipeline import CompressionSummary, compressed_tensors
from tachyon.compress.recipe import RECIPE_FILE, Recipe
from tachyon.models.convert import _check_target
from tachyon.models.loader import load_model_source
from tachyon.quantization.compressed_tensors import quantization_config
from tachyon.quantization.schemes import QuantScheme
from tachyon.quantization.sparsity import sparsity_config

__all__ = ["CompressionReport", "compress_model", "oneshot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressionReport:
    output_dir: str
    seconds: float
    peak_rss_bytes: int  # of this process so far
    num_calibration_samples: int
    num_calibration_tokens: int


def oneshot(
    model: str | None = None,
    recipe: Recipe | Modifier | list[Modifier] | str = "",
    dataset: str | Sequence[str] | None = None,
    *,
    output_dir: str,
    num_calibration_samples: int = 512,
    max_seq_length: int = 2048,
    overwrite: bool = False,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    pipeline: str = "sequential",
    seed: int = 42,
) -> CompressionReport:
    """Compress `model` (None: the default model; an HF folder, .gguf file or Hub id) with `recipe`
    (modifiers, a Recipe, or YAML text / path) and write it to `output_dir`. Calibration data: `dataset`
    (None: the built-in lee_background slice; a .txt/.jsonl/.json/.parquet file; hf:NAME[:CONFIG[:SPLIT]];
    a list of strings), read only when a modifier needs it. `pipeline` "sequential" holds one decoder layer
    in memory at a time; "whole_model" loads them all first. `dtype` casts dense tensors and scales
    (default: as stored)."""
    recipe = Recipe.parse(recipe)
    if pipeline not in ("sequential", "whole_model"):
        raise ValueError(f"pipeline must be 'sequential' or 'whole_model', got {pipeline!r}")
    scheme, kv_cache_scheme, targets, ignore = _checkpoint_scheme(recipe.modifiers)
    output_dir = os.path.abspath(output_dir)
    _check_target(output_dir, overwrite)
    started = time.perf_counter()
    source = load_model_source(model)
    samples = None
    if recipe.needs_data:
        samples = calibration_samples(source.tokenizer, dataset, num_calibration_samples, max_seq_length, seed)
    summary = CompressionSummary()
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tensors = compressed_tensors(
        source,
        recipe.modifiers,
        samples,
        summary,
        device=torch_device,
        dtype=dtype,
        whole_model=pipeline == "whole_model",
    )
    structure = next((m.sparsity_structure for m in recipe.modifiers if m.sparsity_structure), None)

    def config() -> dict:  # after the weights are written: the sparsity share is known then
        sparse = None
        if structure is not None:
            sparse = sparsity_config(ignore, summary.num_zeros / max(summary.num_pruned_params, 1), structure)
        return quantization_config(scheme, ignore, sparse, targets=targets, kv_cache_scheme=kv_cache_scheme)

    with torch.no_grad():
        save_checkpoint(source, config, tensors, output_dir, dtype, {RECIPE_FILE: recipe.to_yaml()})
    report = CompressionReport(
        output_dir,
        time.perf_counter() - started,
        peak_rss_bytes(),
        len(samples or []),
        sum(len(s) for s in samples or []),
    )
    logger.info(
        "compressed in %.1f s, peak memory %.0f MiB: %s", report.seconds, report.peak_rss_bytes / 2**20, output_dir
    )
    return report


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM where /proc has it (ru_maxrss also counts what a
    forked parent had resident, so a child of a big process would report the parent's size)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    """Data-free compression: prune to `sparsity` "2:4" by magnitude and/or quantize round-to-nearest with
    the preset `scheme`; returns the checkpoint folder. (A static-FP8 scheme still calibrates its activation
    scales, on the built-in text.)"""
    if scheme is None and sparsity is None:
        raise ValueError("nothing to do: give a quantization scheme, --sparsity 2:4, or both")
    if sparsity not in (None, "2:4"):
        raise ValueError(f"sparsity {sparsity!r} is not supported; supported: 2:4")
    modifiers: list[Modifier] = []
    if sparsity is not None:
        modifiers.append(MagnitudePruningModifier(mask_structure=sparsity, ignore=list(ignore)))
    if scheme is not None:
        modifiers.append(QuantizationModifier(scheme=scheme, group_size=group_size, ignore=list(ignore)))
    return oneshot(model, modifiers, output_dir=output_dir, overwrite=overwrite, dtype=dtype).output_dir


def _checkpoint_scheme(modifiers: list[Modifier]) -> tuple[QuantScheme | None, dict | None, list[str], list[str]]:
    """The one quantization scheme (and kv_cache_scheme) the recipe ends in, its targets and ignore list."""
    quantizing = [m for m in modifiers if m.scheme_args[0] is not None]
    if len({m.scheme_args[0] for m in quantizing}) > 1:
        raise ValueError(
            "a recipe may end in one quantization scheme; found " + ", ".join(m.scheme_args[0].name for m in quantizing)
        )
    if not quantizing:
        return None, None, ["Linear"], modifiers[0].ignore
    last = quantizing[-1]
    return last.scheme_args[0], last.scheme_args[1], last.targets, last.ignore
