"""Weight bytes of a model under a compression scheme, by layer type, counted tensor by tensor as
`tachyon compress` / LLM Compressor store them (compressed-tensors format). `memory.py` and the
planner call `weight_breakdown`; `PlanScheme` is the planner's view of `--scheme` and `--sparsity`.

Per decoder Linear [out, in] with b-bit weights, d = bytes of the dense dtype, G = in / group_size:
  dense            out*in*d
  pack-quantized   int32 weight_packed [out, ceil(in*b/32)] + weight_scale [out, G]*d + int64 weight_shape [2]
                   (+ asymmetric: int32 weight_zero_point [ceil(out*b/32), G])
  int-quantized    int8 weight [out, in] + weight_scale [out, 1]*d
  float-quantized  fp8 weight [out, in] + weight_scale ([out, 1] per channel, [1] per tensor)*d
                   (+ static activations: input_scale [1]*d)
Embeddings, lm_head, norms and biases are never quantized. 2:4 sparsity is stored dense with the zeros
in place, so on its own it saves no bytes in this format (nor time: there is no 2:4 kernel yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from tachyon.plan.model_spec import ModelSpec
from tachyon.quantization.schemes import QuantScheme, create_scheme

__all__ = ["DENSE_NAMES", "PlanScheme", "WeightGroup", "create_plan_scheme", "weight_breakdown"]

DENSE_NAMES = ("bf16", "fp16", "fp32", "dense", "none")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class PlanScheme:
    """`quant` None: weights dense in the model dtype. `sparse_2_4`: pruned 2:4 (stored dense)."""

    quant: QuantScheme | None
    sparse_2_4: bool = False

    @property
    def name(self) -> str:
        base = self.quant.name if self.quant else "unquantized"
        return f"{base}+2:4" if self.sparse_2_4 else base

    @property
    def matmul(self) -> str:
        """The GEMM kind the engine runs: "int8" (W8A8), "fp8" (FP8 schemes) or "bf16" (16-bit activations)."""
        acts = self.quant.input_activations if self.quant else None
        if acts is None:
            return "bf16"
        return "fp8" if acts.type == "float" else "int8"

    @property
    def weight_only(self) -> bool:
        return self.quant is not None and self.quant.input_activations is None


def create_plan_scheme(name: str, sparsity: str | None = None, group_size: int | None = None) -> PlanScheme:
    """`name`: bf16 (or fp16, fp32, dense, none: no quantization) or a preset (W8A16, W4A16, ...)."""
    if sparsity not in (None, "2:4"):
        raise ValueError(f"--sparsity {sparsity!r} is not supported; supported: 2:4")
    if name.lower() in DENSE_NAMES:
        if group_size is not None:
            raise ValueError("--group-size applies only to grouped schemes (W8A16, W4A16, W4A16_ASYM)")
        return PlanScheme(None, sparsity is not None)
    try:
        return PlanScheme(create_scheme(name, group_size=group_size), sparsity is not None)
    except ValueError as e:
        raise ValueError(f"--scheme: {e} (or bf16 for no quantization)") from None


@dataclass(frozen=True)
class WeightGroup:
    """One layer type's tensors: parameter count, total bytes, and the part of them that is scales,
    zero points and shapes (the quantization overhead)."""

    name: str
    num_params: int
    num_bytes: int
    overhead_bytes: int = 0


def weight_breakdown(spec: ModelSpec, scheme: PlanScheme, dtype_bytes: int) -> list[WeightGroup]:
    """Every weight tensor of the model, grouped by layer type; dense tensors and scales in `dtype_bytes`."""
    groups = [
        _linears(spec, "attention (q/k/v/o)", _ATTENTION, scheme.quant, dtype_bytes),
        _linears(spec, "mlp (gate/up/down)", _MLP, scheme.quant, dtype_bytes),
        _dense("embeddings", spec.vocab_size * spec.hidden_size, dtype_bytes),
        _dense(
            "lm_head" + (" (tied: shares the embeddings)" if spec.tie_word_embeddings else ""),
            0 if spec.tie_word_embeddings else spec.vocab_size * spec.hidden_size,
            dtype_bytes,
        ),  # fmt: skip
        _dense("norms", _norm_params(spec), dtype_bytes),
    ]
    biases = _bias_params(spec)
    return groups + ([_dense("biases", biases, dtype_bytes)] if biases else [])


def _dense(name: str, num_params: int, dtype_bytes: int) -> WeightGroup:
    return WeightGroup(name, num_params, num_params * dtype_bytes)


def _linears(spec: ModelSpec, name: str, modules: tuple[str, ...], quant: QuantScheme | None, d: int) -> WeightGroup:
    shapes = [spec.linear_shapes()[m] for m in modules]
    params = sum(o * i for o, i in shapes) * spec.num_layers
    if quant is None:
        return WeightGroup(name, params, params * d)
    codes, overhead = 0, 0
    for out_features, in_features in shapes:
        c, o = _quantized_linear_bytes(out_features, in_features, quant, d)
        codes, overhead = codes + c, overhead + o
    return WeightGroup(name, params, (codes + overhead) * spec.num_layers, overhead * spec.num_layers)


def _quantized_linear_bytes(out_features: int, in_features: int, quant: QuantScheme, d: int) -> tuple[int, int]:
    """(weight code bytes, scale/zero-point/shape bytes) of one quantized Linear."""
    w = quant.weights
    num_scales = _num_scales(out_features, in_features, w.strategy, w.group_size)
    overhead = num_scales * d
    if quant.format == "pack-quantized":
        codes = out_features * -(-in_features * w.num_bits // 32) * 4
        overhead += 2 * 8  # weight_shape int64 [2]
        if not w.symmetric:
            overhead += -(-out_features * w.num_bits // 32) * (num_scales // out_features) * 4
        return codes, overhead
    codes = out_features * in_features  # int8 or fp8: one byte per weight
    acts = quant.input_activations
    if acts is not None and not acts.dynamic:
        overhead += d  # input_scale [1]
    return codes, overhead


def _num_scales(out_features: int, in_features: int, strategy: str, group_size: int | None) -> int:
    if strategy == "tensor":
        return 1
    if strategy == "channel":
        return out_features
    if in_features % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide in_features {in_features}; "
            "compressed-tensors cannot store ragged groups: pick --group-size that divides it (or -1)"
        )
    return out_features * (in_features // group_size)


def _norm_params(spec: ModelSpec) -> int:
    per_layer = 2 * spec.hidden_size + (2 * spec.head_dim if spec.qk_norm else 0)
    return per_layer * spec.num_layers + spec.hidden_size


def _bias_params(spec: ModelSpec) -> int:
    per_layer = (spec.q_size + 2 * spec.kv_size) * spec.qkv_bias + spec.hidden_size * spec.o_bias
    per_layer += (2 * spec.intermediate_size + spec.hidden_size) * spec.mlp_bias
    return per_layer * spec.num_layers
