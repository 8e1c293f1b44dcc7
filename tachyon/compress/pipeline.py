"""Layer-by-layer (sequential) compression: the checkpoint is produced as a stream of tensors, and each decoder
layer is read from disk, calibrated by the recipe's modifiers, propagated and written before the next one
is read. Peak memory is one layer, its Hessians and the calibration activations (plus the embeddings while
the first hidden states are computed), so a model larger than RAM compresses when its safetensors are read
lazily. `whole_model=True` loads every layer up front instead (the whole-model approach, for comparison).

    embed_tokens(samples) ─► hidden ─► layer 0: load ─► modifiers (each may run calibration passes)
                                        ─► forward with the compressed weights ─► hidden ─► layer 1 ...

`tachyon.compress.entrypoints` calls `compressed_tensors`; the modifiers see each layer as a `LayerState`.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from tachyon.compress.modifiers import Modifier
from tachyon.compress.state import Calibration, LayerState
from tachyon.models.loader import ModelSource
from tachyon.quantization.compressed_tensors import compress_weight

__all__ = ["CompressionSummary", "compressed_tensors"]

logger = logging.getLogger(__name__)

_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EMBEDDINGS = "model.embed_tokens.weight"


@dataclass
class CompressionSummary:
    """What the stream pruned, for the checkpoint's sparsity_config: filled in as layers are written."""

    num_zeros: int = 0  # in the Linears a pruning modifier touched
    num_pruned_params: int = 0


class LayerwiseModel:
    """An HF transformers model skeleton on the meta device whose decoder layers get real weights one at a
    time, read from the checkpoint by name."""

    def __init__(self, source: ModelSource, device: torch.device) -> None:
        config = copy.deepcopy(source.hf_config)
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            self.skeleton = AutoModelForCausalLM.from_config(config)
        with torch.device(device):
            self.rotary = type(self.skeleton.model.rotary_emb)(config=config)
        self.source, self.device = source, device
        self.stored_dtypes: dict[str, torch.dtype] = {}
        self.layer_tensors: dict[int, list[str]] = {}
        self.other_tensors: list[str] = []
        for name in source.tensor_names():
            if "rotary_emb" in name:  # old checkpoints store inv_freq; the skeleton computes its own
                continue
            found = _LAYER_TENSOR.fullmatch(name)
            if found:
                self.layer_tensors.setdefault(int(found.group(1)), []).append(name)
            else:
                self.other_tensors.append(name)

    @property
    def num_layers(self) -> int:
        return len(self.skeleton.model.layers)

    def load(self, name: str) -> torch.Tensor:
        tensor = self.source.load_tensor(name)
        self.stored_dtypes[name] = tensor.dtype
        return tensor

    def materialize(self, index: int) -> torch.nn.Module:
        """Layer `index` with its checkpoint weights, float32 on the pipeline's device."""
        layer = self.skeleton.model.layers[index]
        if not next(layer.parameters()).is_meta:
            return layer
        prefix = f"model.layers.{index}."
        state = {name.removeprefix(prefix): self.load(name) for name in self.layer_tensors.get(index, [])}
        layer.to_empty(device=self.device).float()
        layer.load_state_dict(state, strict=True)
        return layer.requires_grad_(False)

    def release(self, index: int) -> None:
        self.skeleton.model.layers[index].to_empty(device="meta")

    def position_embeddings(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(num_tokens, device=self.device)[None]
        return self.rotary(torch.empty(1, dtype=torch.float32, device=self.device), positions)


def compressed_tensors(
    source: ModelSource,
    modifiers: list[Modifier],
    samples: list[list[int]] | None,
    summary: CompressionSummary,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    whole_model: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The compressed checkpoint's tensors in order: embeddings, each decoder layer as the modifiers leave
    it, then the rest. `samples` (token ids) are needed when a modifier calibrates; `dtype` casts dense
    tensors and scales (default: each as stored)."""
    model = LayerwiseModel(source, device)
    if whole_model:
        for index in range(model.num_layers):
            model.materialize(index)
    embeddings = model.load(_EMBEDDINGS)
    calibration = _embed(model, embeddings, samples) if samples else None
    yield _EMBEDDINGS, _cast(embeddings, dtype)
    del embeddings
    with tqdm(total=model.num_layers, desc="compress", unit="layer") as progress:
        for index in range(model.num_layers):
            layer = model.materialize(index)
            weight_dtype = dtype or model.stored_dtypes[f"model.layers.{index}.self_attn.q_proj.weight"]
            state = LayerState(f"model.layers.{index}", layer, calibration, weight_dtype)
            for modifier in modifiers:
                modifier.apply(state)
            if calibration is not None and index + 1 < model.num_layers:
                with torch.no_grad():  # the next layer calibrates on what this compressed layer outputs
                    calibration.hidden = [state.forward(i) for i in range(len(calibration.hidden))]
            yield from _layer_tensors(state, model, summary, dtype)
            model.release(index)
            progress.update(1)
    for name in model.other_tensors:
        if name != _EMBEDDINGS:
            yield name, _cast(model.load(name), dtype)


def _embed(model: LayerwiseModel, embeddings: torch.Tensor, samples: list[list[int]]) -> Calibration:
    hidden, position_embeddings = [], []
    largest = max(max(ids) for ids in samples)
    if largest >= embeddings.shape[0]:
        raise ValueError(
            f"calibration token id {largest} is outside the model's vocabulary of {embeddings.shape[0]}: "
            "the tokenizer does not belong to this model"
        )
    for ids in samples:  # rows picked before the cast: no float32 copy of the whole table
        hidden.append(embeddings[torch.tensor(ids)].to(model.device, torch.float32)[None])  # [1, T, hidden]
        position_embeddings.append(model.position_embeddings(len(ids)))
    logger.info("calibration: %d samples, %d tokens", len(samples), sum(len(s) for s in samples))
    return Calibration(hidden, position_embeddings)


def _layer_tensors(
    state: LayerState, model: LayerwiseModel, summary: CompressionSummary, dtype: torch.dtype | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The layer's checkpoint tensors: quantized Linears in their stored format, the rest dense."""
    params = dict(state.module.named_parameters())
    for num_zeros, num_params in state.pruned.values():
        summary.num_zeros += num_zeros
        summary.num_pruned_params += num_params
    for name in model.layer_tensors.get(int(state.prefix.rsplit(".", 1)[1]), []):
        rel = name.removeprefix(f"{state.prefix}.")
        module, _, suffix = name.rpartition(".")
        value = params[rel].detach().cpu() if rel in params else model.load(name)
        out_dtype = dtype or model.stored_dtypes.get(name, value.dtype)
        if suffix == "weight" and module in state.quantized:
            result = state.quantized[module]
            qparams = (result.scale.to(out_dtype), result.zero_point)
            yield from ((f"{module}.{k}", v) for k, v in compress_weight(value, result.scheme, qparams).items())
            if module in state.input_scales:
                yield f"{module}.input_scale", state.input_scales[module].to(out_dtype)
        else:
            yield name, value.to(out_dtype)
    for name, scale in state.kv_scales.items():
        yield name, scale.to(dtype or torch.float32)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
