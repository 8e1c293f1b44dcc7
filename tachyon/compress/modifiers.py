"""Compression algorithms as modifiers, in LLM Compressor's names and parameter spelling. A recipe is a list
of modifiers; the pipeline calls each one's `apply` on every decoder layer in recipe order, so a modifier
sees the layer as the ones before it left it (SmoothQuant's smoothed weights reach GPTQ's Hessians). The
math lives in pure functions (`gptq`, `sparsegpt`, `smoothquant`, `awq`, `kv_scales`); these classes only
pick the Linears, run the calibration passes and record the results on the `LayerState`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from tachyon.compress.awq import apply_clip, clip_search, scale_search
from tachyon.compress.gptq import gptq_quantize
from tachyon.compress.hessian import Hessian
from tachyon.compress.kv_scales import check_kv_cache_scheme, observe_static_scales
from tachyon.compress.smoothquant import LLAMA_SMOOTHING_MAPPINGS, apply_smoothing, smoothing_scales
from tachyon.compress.sparsegpt import parse_mask_structure, sparsegpt_prune
from tachyon.compress.state import LayerState, QuantizedWeight
from tachyon.quantization.quantize import check_group_size, round_to_nearest
from tachyon.quantization.schemes import QuantScheme, create_scheme
from tachyon.quantization.sparsity import prune_n_m

__all__ = [
    "MODIFIERS",
    "AWQModifier",
    "GPTQModifier",
    "MagnitudePruningModifier",
    "Modifier",
    "QuantizationModifier",
    "SmoothQuantModifier",
    "SparseGPTModifier",
    "create_modifier",
]


@dataclass
class Modifier:
    """Base: which Linears of each decoder layer it acts on (`Linear` = all; names or `re:` patterns)."""

    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])

    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        self.ignore = [self.ignore] if isinstance(self.ignore, str) else list(self.ignore)

    def apply(self, layer: LayerState) -> None:
        raise NotImplementedError

    @property
    def scheme_args(self) -> tuple[QuantScheme | None, dict | None]:
        """The checkpoint-level results: (quantization scheme, kv_cache_scheme) this modifier produces."""
        return None, None

    @property
    def sparsity_structure(self) -> str | None:
        return None

    def to_dict(self) -> dict:
        """Parameters for the recipe file (what `create_modifier` takes back)."""
        return dataclasses.asdict(self)


def _hessians(layer: LayerState, linears: dict[str, torch.nn.Linear]) -> dict[str, torch.Tensor]:
    """H = 2XXᵀ/n of every Linear's inputs over one calibration pass (the pass also runs the rest)."""
    accumulators = {name: Hessian(lin.in_features, device=lin.weight.device) for name, lin in linears.items()}
    layer.run([(lin, lambda x, y, h=accumulators[n]: h.add(x)) for n, lin in linears.items()])
    return {name: h.matrix for name, h in accumulators.items()}


@dataclass
class _QuantizingModifier(Modifier):
    """Shared by the modifiers that end in a quantization scheme: preset name, group-size override, optional
    static fp8 KV-cache scales (LLM Compressor's `kv_cache_scheme`)."""

    scheme: str = "W4A16"
    group_size: int | None = None
    kv_cache_scheme: dict | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._scheme = create_scheme(self.scheme, group_size=self.group_size)
        if self.kv_cache_scheme is not None:
            check_kv_cache_scheme(self.kv_cache_scheme)

    @property
    def scheme_args(self) -> tuple[QuantScheme | None, dict | None]:
        return self._scheme, self.kv_cache_scheme

    def check_shapes(self, linears: dict[str, torch.nn.Linear]) -> None:
        if self._scheme.weights.strategy == "group":
            for name, lin in linears.items():
                check_group_size(lin.in_features, self._scheme.weights.group_size, f"{self._scheme.name} on {name}")

    def finish(self, layer: LayerState, linears: dict[str, torch.nn.Linear]) -> None:
        """Static activation scales (FP8) and KV-cache scales, observed on the quantized layer."""
        inputs, kv_cache = self._scheme.needs_calibration, self.kv_cache_scheme is not None
        if inputs or kv_cache:
            input_scales, kv_scales = observe_static_scales(layer, linears, inputs=inputs, kv_cache=kv_cache)
            layer.input_scales.update(input_scales)
            layer.kv_scales.update(kv_scales)


@dataclass
class QuantizationModifier(_QuantizingModifier):
    """Round-to-nearest with a preset scheme; data-free unless the scheme has static activation scales
    (FP8) or a kv_cache_scheme is given."""

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self._scheme.needs_calibration or self.kv_cache_scheme is not None

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        linears = layer.linears(self.targets, self.ignore)
        self.check_shapes(linears)
        for name, lin in linears.items():
            fake, scale, zero_point = round_to_nearest(lin.weight, self._scheme.weights, layer.weight_dtype)
            lin.weight.copy_(fake)
            layer.quantized[name] = QuantizedWeight(self._scheme, scale, zero_point)
        self.finish(layer, linears)


@dataclass
class GPTQModifier(_QuantizingModifier):
    """GPTQ (Frantar et al. 2022): column-by-column rounding with Hessian-weighted error feedback."""

    block_size: int = 128
    dampening_frac: float = 0.01
    actorder: str | None = "static"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actorder not in (None, "static"):
            raise ValueError(f"GPTQModifier actorder must be 'static' or null, got {self.actorder!r}")

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        linears = layer.linears(self.targets, self.ignore)
        self.check_shapes(linears)
        hessians = _hessians(layer, linears)
        for name, lin in linears.items():
            result = gptq_quantize(
                lin.weight.data,
                hessians.pop(name),
                self._scheme.weights,
                block_size=self.block_size,
                dampening_frac=self.dampening_frac,
                actorder=self.actorder == "static",
                name=name,
            )
            lin.weight.copy_(result.weight)
            layer.quantized[name] = QuantizedWeight(self._scheme, result.scale, result.zero_point)
        self.finish(layer, linears)


@dataclass
class _PruningModifier(Modifier):
    sparsity: float = 0.5
    mask_structure: str = "2:4"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_structure != "0:0":
            num_pruned, group_len = parse_mask_structure(self.mask_structure)
            self.sparsity = num_pruned / group_len
        elif not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")

    @property
    def sparsity_structure(self) -> str | None:
        return "unstructured" if self.mask_structure == "0:0" else self.mask_structure


@dataclass
class MagnitudePruningModifier(_PruningModifier):
    """Baseline: drop the smallest-magnitude weights (N of every M inputs, or a fraction of each row)."""

    needs_data: ClassVar[bool] = False

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        for name, lin in layer.linears(self.targets, self.ignore).items():
            lin.weight.copy_(magnitude_prune(lin.weight, self.sparsity, self.mask_structure))
            layer.record_pruned(name, lin.weight)


def magnitude_prune(weight: torch.Tensor, sparsity: float, mask_structure: str) -> torch.Tensor:
    """Zero the smallest |w|: N of every M consecutive inputs ('N:M'), or `sparsity` of each row ('0:0')."""
    if mask_structure != "0:0":
        return prune_n_m(weight, *parse_mask_structure(mask_structure))
    drop = weight.abs().topk(int(weight.shape[1] * sparsity), dim=1, largest=False).indices
    return weight.scatter(1, drop, 0.0)


@dataclass
class SparseGPTModifier(_PruningModifier):
    """SparseGPT (Frantar & Alistarh 2023): pruning with OBS updates of the remaining weights."""

    block_size: int = 128
    dampening_frac: float = 0.01

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        linears = layer.linears(self.targets, self.ignore)
        hessians = _hessians(layer, linears)
        for name, lin in linears.items():
            result = sparsegpt_prune(
                lin.weight.data,
                hessians.pop(name),
                sparsity=self.sparsity,
                mask_structure=self.mask_structure,
                block_size=self.block_size,
                dampening_frac=self.dampening_frac,
                name=name,
            )
            lin.weight.copy_(result.weight)
            layer.record_pruned(name, lin.weight)


@dataclass
class SmoothQuantModifier(Modifier):
    """SmoothQuant: fold per-channel scales from calibration activations into the norms and weights."""

    smoothing_strength: float = 0.5
    mappings: list | None = None  # [[norm, [linear, ...]], ...] relative to a layer; None: Llama's

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        """One pass collects max |x| per channel of every mapping's input; smoothing one norm leaves the
        other mappings' inputs unchanged (the layer computes the same function), so all apply after it."""
        targeted = layer.linears(self.targets, self.ignore)
        mappings = []
        for norm_name, linear_names in self.mappings or LLAMA_SMOOTHING_MAPPINGS:
            names = [f"{layer.prefix}.{n}" for n in linear_names]
            if all(n in targeted for n in names):
                mappings.append((layer.submodule(f"{layer.prefix}.{norm_name}"), [targeted[n] for n in names]))
        absmax = [torch.zeros(linears[0].in_features) for _, linears in mappings]
        hooks = [
            (linears[0], lambda x, y, m=m: m.copy_(torch.maximum(m, _channel_absmax(x))))
            for (_, linears), m in zip(mappings, absmax)
        ]
        layer.run(hooks)
        for (norm, linears), channel_max in zip(mappings, absmax):
            apply_smoothing(norm, linears, smoothing_scales(channel_max, linears, self.smoothing_strength))


@dataclass
class AWQModifier(_QuantizingModifier):
    """AWQ: activation-aware scales folded into the preceding op, a clipping search, then round-to-nearest.
    `num_search_tokens` caps the calibration tokens the two grid searches replay (None: all of them)."""

    n_grid: int = 20
    duo_scaling: bool = True
    max_shrink: float = 0.5
    num_search_tokens: int | None = None
    mappings: list | None = None  # [[smooth op, [balance Linears], parent block], ...]; None: Llama's

    @torch.no_grad()
    def apply(self, layer: LayerState) -> None:
        linears = layer.linears(self.targets, self.ignore)
        self.check_shapes(linears)
        args = self._scheme.weights
        mappings = [m for m in (self.mappings or AWQ_LLAMA_MAPPINGS) if _awq_mapping_fits(layer, m, linears)]
        inputs = _capture_inputs(layer, sorted(set(_INPUT_SOURCES.values())), self.num_search_tokens)
        for smooth_name, balance_names, parent_name in mappings:
            balance = [layer.submodule(f"{layer.prefix}.{n}") for n in balance_names]
            cached = inputs[_INPUT_SOURCES[balance_names[0]]]
            block = _block_output(layer, parent_name, cached)
            act_mean = torch.cat([x.reshape(-1, x.shape[-1]) for x in cached.inputs]).abs().float().mean(dim=0)
            scales = scale_search(balance, act_mean, block, args, n_grid=self.n_grid, duo_scaling=self.duo_scaling)
            _fold_scales(layer.submodule(f"{layer.prefix}.{smooth_name}"), balance, scales)
            cached.inputs = [x / scales for x in cached.inputs]
        for name, lin in linears.items():
            rel = name.removeprefix(f"{layer.prefix}.")
            if rel in _INPUT_SOURCES and not rel.endswith(("q_proj", "k_proj")):  # scores are not linear in q, k
                tokens = _token_sample(inputs[_INPUT_SOURCES[rel]].inputs)
                lin.weight.copy_(
                    apply_clip(
                        lin.weight,
                        clip_search(lin.weight, tokens, args, n_grid=self.n_grid, max_shrink=self.max_shrink),
                        args,
                    )
                )
            fake, scale, zero_point = round_to_nearest(lin.weight, args, layer.weight_dtype)
            lin.weight.copy_(fake)
            layer.quantized[name] = QuantizedWeight(self._scheme, scale, zero_point)
        self.finish(layer, linears)


AWQ_LLAMA_MAPPINGS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),  # only without GQA: shapes must match
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)
# Linear -> the Linear whose input it shares (the one whose input is cached)
_INPUT_SOURCES = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.q_proj",
    "self_attn.v_proj": "self_attn.q_proj",
    "self_attn.o_proj": "self_attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.gate_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_CLIP_TOKENS = 512  # AutoAWQ's n_sample_token for the clipping search


@dataclass
class _CachedInputs:
    inputs: list[torch.Tensor]  # what the balance Linears see, per search sample
    position_embeddings: list


def _awq_mapping_fits(layer: LayerState, mapping, linears: dict[str, torch.nn.Linear]) -> bool:
    smooth_name, balance_names, _ = mapping
    if not all(f"{layer.prefix}.{n}" in linears for n in balance_names):
        return False
    smooth = layer.submodule(f"{layer.prefix}.{smooth_name}")
    width = smooth.out_features if isinstance(smooth, torch.nn.Linear) else smooth.weight.shape[0]
    return all(layer.submodule(f"{layer.prefix}.{n}").in_features == width for n in balance_names)


def _capture_inputs(layer: LayerState, names: list[str], num_tokens: int | None) -> dict[str, _CachedInputs]:
    """One calibration pass keeping the inputs of the named Linears for the first samples (up to
    `num_tokens` tokens)."""
    calib = layer.require_calibration()
    count, total = 0, 0
    for hidden in calib.hidden:
        if num_tokens is not None and count and total + hidden.shape[1] > num_tokens:
            break
        count, total = count + 1, total + hidden.shape[1]
    cached = {n: _CachedInputs([], calib.position_embeddings[:count]) for n in names}
    hooks = []
    for name in names:
        store = cached[name].inputs
        hooks.append(
            (layer.submodule(f"{layer.prefix}.{name}"), lambda x, y, s=store: s.append(x) if len(s) < count else None)
        )
    layer.run(hooks)
    return cached


def _block_output(layer: LayerState, parent_name: str, cached: _CachedInputs):
    """A function recomputing the parent block's outputs [tokens, width] over the cached inputs."""
    parent = layer.submodule(f"{layer.prefix}.{parent_name}")
    attention = parent_name.endswith("self_attn")  # needs RoPE; causal when no mask is given

    def output() -> torch.Tensor:
        outs = []
        for x, pe in zip(cached.inputs, cached.position_embeddings):
            out = parent(x, position_embeddings=pe, attention_mask=None) if attention else parent(x)
            out = out[0] if isinstance(out, tuple) else out
            outs.append(out.reshape(-1, out.shape[-1]))
        return torch.cat(outs)

    return output


def _fold_scales(smooth: torch.nn.Module, balance: list[torch.nn.Linear], scales: torch.Tensor) -> None:
    """x -> x / s at the smoothing op's output (a norm's weight or a Linear's rows), W -> W * s."""
    if isinstance(smooth, torch.nn.Linear):
        smooth.weight.div_(scales[:, None])
        if smooth.bias is not None:
            smooth.bias.div_(scales)
    else:
        smooth.weight.div_(scales)
    for lin in balance:
        lin.weight.mul_(scales[None, :])


def _token_sample(inputs: list[torch.Tensor]) -> torch.Tensor:
    tokens = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
    step = max(1, tokens.shape[0] // _CLIP_TOKENS)
    return tokens[::step][:_CLIP_TOKENS]


def _channel_absmax(x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float().cpu()


MODIFIERS: dict[str, type[Modifier]] = {
    cls.__name__: cls
    for cls in (
        QuantizationModifier,
        GPTQModifier,
        SparseGPTModifier,
        MagnitudePruningModifier,
        SmoothQuantModifier,
        AWQModifier,
    )
}


def create_modifier(name: str, params: dict | None = None) -> Modifier:
    """A modifier by its LLM Compressor name and recipe parameters; unknown names or parameters fail here."""
    cls = MODIFIERS.get(name)
    if cls is None:
        raise ValueError(f"unknown modifier {name!r}; supported: {', '.join(MODIFIERS)}")
    accepted = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params or {}) - accepted)
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")
    return cls(**(params or {}))
