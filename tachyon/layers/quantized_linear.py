"""Linear methods that run compressed-tensors checkpoints as stored, chosen per layer from the checkpoint's
`quantization_config` by `quantized_linear_method`.

- W8A8 (int8 weights per channel, int8 activations per token, dynamic): `torch._int_mm` on CPU and CUDA.
  The activation scale is absmax / 127.5, compressed-tensors' convention, so the quantized activations
  are exactly the ones HF transformers' fake quantization produces.
- FP8 (float8_e4m3fn weights per channel or tensor; activations per token dynamic, or per tensor static):
  `torch._scaled_mm` on CUDA GPUs of compute capability 8.9+. Elsewhere the weights are dequantized once
  at load and the activations fake-quantized (quantize, dequantize) per call, as HF transformers does:
  the same numbers, without an fp8 GEMM.
- Weight-only integers (W4A16, W8A16, asymmetric too; pack-quantized): on CUDA kept packed and run by a
  fused Triton dequant-GEMM (`tachyon.kernels.quant_gemm`); elsewhere dequantized once at load.

Shards (q/k/v, gate/up) stack along the output dim; per-tensor scales become one scale per output row so
that shards with different scales share one matmul, and a static input scale is the largest of the shards'.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tachyon.distributed.parallel_state import all_reduce
from tachyon.layers.linear import Linear, LinearMethod, copy_rows, frozen
from tachyon.quantization.compressed_tensors import CheckpointQuantization, LinearQuantization
from tachyon.quantization.quantize import FP8_DTYPE, FP8_MAX, dequantize, unpack_int32
from tachyon.quantization.schemes import QuantArgs

INT8_SCALE_DIVISOR = 127.5  # compressed-tensors: (q_max - q_min) / 2 for int8


def make_linear(
    quant: CheckpointQuantization | None,
    prefix: str,
    names: list[str],
    input_size: int,
    shard_sizes: dict,
    bias: bool,
    dtype: torch.dtype,
    parallel: str | None = None,
) -> Linear:
    """A model's Linear whose checkpoint modules are `prefix.<name>` for each name (several when fused),
    with the method their quantization scheme needs (dense when the checkpoint leaves them unquantized)."""
    scheme = quant.for_modules([f"{prefix}.{name}" for name in names]) if quant is not None else None
    method = quantized_linear_method(scheme, torch.get_default_device()) if scheme is not None else None
    return Linear(input_size, shard_sizes, bias, dtype, method, parallel)


def quantized_linear_method(scheme: LinearQuantization, device: torch.device) -> LinearMethod:
    """The method that runs `scheme` on `device`; a clear error for a scheme no method covers."""
    w, a = scheme.weights, scheme.input_activations
    if a is None and w.type == "int" and scheme.format == "pack-quantized":
        return WeightOnlyIntMethod(w)
    if a is None:
        raise ValueError(f"weight-only {w.type} weights in format {scheme.format!r} are not supported")
    if w.type == "int" and a.type == "int" and w.num_bits == a.num_bits == 8 and w.symmetric and a.symmetric:
        if w.strategy == "channel" and a.strategy == "token" and a.dynamic:
            return Int8DynamicMethod(device)
    if w.type == "float" and a.type == "float" and w.strategy in ("channel", "tensor"):
        if (a.strategy == "token" and a.dynamic) or (a.strategy == "tensor" and not a.dynamic):
            return Fp8Method(a, device)
    raise ValueError(f"no kernel for weights {w} with input activations {a}; supported: W8A8, FP8_DYNAMIC, FP8")


def per_token_scale(layer: Linear, x: torch.Tensor, divisor: float) -> torch.Tensor:
    """[T, K] -> [T, 1] absmax / divisor in x's dtype, zeros replaced by eps (compressed-tensors' rule).
    A row-parallel layer's ranks each see a slice of K: they agree on the absmax over all of it, so the
    activations quantize as they would on one device."""
    absmax = x.abs().amax(dim=-1, keepdim=True)
    if layer.parallel == "row":
        all_reduce(absmax, dist.ReduceOp.MAX)
    scale = absmax / divisor
    return torch.where(scale == 0, torch.finfo(x.dtype).eps, scale)


class Int8DynamicMethod(LinearMethod):
    """y = (q_x @ q_w.T) * s_x * s_w with int32 accumulation: exact integer products."""

    kernel = "int8 torch._int_mm, dynamic per-token activations"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def create_weights(self, layer: Linear, dtype: torch.dtype) -> None:
        layer.weight = frozen(torch.empty(layer.output_size, layer.input_size, dtype=torch.int8))
        layer.weight_scale = frozen(torch.empty(layer.output_size, 1, dtype=torch.float32))

    def process_weights_after_loading(self, layer: Linear) -> None:
        if self.device.type == "cpu":  # oneDNN is fastest on a row-major [in, out] operand
            layer.weight = frozen(layer.weight.data.t().contiguous().t())
        layer.weight_scale = frozen(layer.weight_scale.data.reshape(1, -1))

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = per_token_scale(layer, rows, INT8_SCALE_DIVISOR)
        q = torch.round((rows / scale).clamp(-128, 127)).to(torch.int8)
        num = q.shape[0]
        if self.device.type == "cuda" and num <= 16:  # cuBLASLt's int8 GEMM needs more than 16 rows
            q = F.pad(q, (0, 0, 0, 17 - num))
        acc = torch._int_mm(q, layer.weight.t())[:num]
        y = (acc.float() * scale.float() * layer.weight_scale).to(x.dtype)
        if layer.bias is not None:
            y = y + layer.bias
        return y.reshape(*x.shape[:-1], -1)


class Fp8Method(LinearMethod):
    """float8_e4m3fn weights with a scale per output row; activations quantized per token (dynamic) or with
    the checkpoint's static per-tensor scale."""

    def __init__(self, inputs: QuantArgs, device: torch.device) -> None:
        self.static_input = not inputs.dynamic
        self.native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        how = "static per-tensor" if self.static_input else "dynamic per-token"
        gemm = "fp8 torch._scaled_mm" if self.native else "weights dequantized at load, activations fake-quantized"
        self.kernel = f"{gemm}, {how} activations"

    def create_weights(self, layer: Linear, dtype: torch.dtype) -> None:
        self.dtype = dtype
        layer.weight = frozen(torch.empty(layer.output_size, layer.input_size, dtype=FP8_DTYPE))
        layer.weight_scale = frozen(torch.empty(layer.output_size, 1, dtype=torch.float32))
        if self.static_input:
            layer.input_scale = frozen(torch.zeros(1, dtype=torch.float32))

    def load(self, layer: Linear, param_name: str, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        if param_name == "input_scale":  # one activation scale for the fused matmul: the largest shard's
            layer.input_scale.copy_(torch.maximum(layer.input_scale, loaded.reshape(1).float()))
            return
        loaded = layer.rank_part(loaded)
        if param_name == "weight_scale" and loaded.numel() == 1:  # per tensor -> per row of this shard
            rows = layer.output_size if shard_id is None else layer.shard_offsets[shard_id][1]
            loaded = loaded.reshape(1, 1).expand(rows, 1)
        copy_rows(layer, getattr(layer, param_name), param_name, loaded, shard_id)

    def process_weights_after_loading(self, layer: Linear) -> None:
        if self.native:
            layer.weight_scale = frozen(layer.weight_scale.data.reshape(1, -1))
        else:
            dense = layer.weight.data.to(torch.float32) * layer.weight_scale.data
            layer.weight = frozen(dense.to(self.dtype))
            del layer.weight_scale

    def _quantize_input(self, layer: Linear, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.static_input:
            scale = layer.input_scale.to(rows.dtype).reshape(1, 1)
        else:
            scale = per_token_scale(layer, rows, FP8_MAX)
        return (rows / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        q, scale = self._quantize_input(layer, rows)
        if not self.native:
            return F.linear(q.to(x.dtype) * scale, layer.weight, layer.bias).reshape(*x.shape[:-1], -1)
        scale_a = scale.float().expand(rows.shape[0], 1).contiguous()
        y = torch._scaled_mm(
            q, layer.weight.t(), scale_a=scale_a, scale_b=layer.weight_scale, bias=layer.bias, out_dtype=x.dtype
        )
        return y.reshape(*x.shape[:-1], -1)


class WeightOnlyIntMethod(LinearMethod):
    """pack-quantized integer weights (per group or channel, zero points for asymmetric ones); activations
    stay in the model dtype. On CUDA the weights stay packed and a Triton kernel dequantizes them in
    registers inside the GEMM (a 4-bit decode reads a quarter of bf16's bytes); elsewhere, or for weights
    the kernel does not cover, they are dequantized once at load for the dense matmul (on CPU packed for
    it as a dense layer's weight is)."""

    kernel = "weights dequantized at load, dense matmul"

    def __init__(self, args: QuantArgs, fused: bool | None = None) -> None:
        """`fused`: the Triton kernel (True), dequantize at load (False), or decide from the layer's device at
        load (None). True on CPU tensors needs TRITON_INTERPRET=1: the tests run the kernel that way."""
        self.args = args
        self.fused = fused
        self.group_size = args.group_size if args.strategy == "group" else None

    def create_weights(self, layer: Linear, dtype: torch.dtype) -> None:
        self.dtype = dtype
        bits, out, cols = self.args.num_bits, layer.output_size, layer.input_size
        if layer.parallel == "row" and (cols * bits % 32 or (self.group_size and cols % self.group_size)):
            raise ValueError(
                f"a row-parallel W{bits} layer's {cols} input columns per rank must fill whole int32 words and "
                f"whole groups of {self.group_size}; use a smaller --tensor-parallel-size"
            )
        groups = cols // self.args.group_size if self.args.strategy == "group" else 1
        layer.weight_packed = frozen(torch.empty(out, -(-cols * bits // 32), dtype=torch.int32))
        layer.weight_scale = frozen(torch.empty(out, groups, dtype=torch.float32))
        if not self.args.symmetric:
            layer.weight_zero_point = frozen(torch.zeros(out, groups, dtype=torch.int8))

    def load(self, layer: Linear, param_name: str, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        rows, cols = layer.checkpoint_shape(shard_id)
        if param_name == "weight_shape":  # rows x columns of this shard: a check, nothing to store
            if loaded.tolist() != [rows, cols]:
                raise ValueError(f"weight_shape {loaded.tolist()} is not the layer's [{rows}, {cols}]")
            return
        if param_name == "weight_zero_point" and loaded.dtype == torch.int32:  # packed along the output dim
            loaded = unpack_int32(loaded, self.args.num_bits, rows, packed_dim=0)
        copy_rows(layer, getattr(layer, param_name), param_name, layer.rank_part(loaded), shard_id)

    def process_weights_after_loading(self, layer: Linear) -> None:
        on_cuda = layer.weight_packed.device.type == "cuda"
        reason = self._unfused_reason() if self.fused or (self.fused is None and on_cuda) else None
        if self.fused and reason is not None:
            raise ValueError(f"the fused W{self.args.num_bits}A16 kernel cannot run this layer: {reason}")
        if self.fused is None:
            self.fused = on_cuda and reason is None
        if self.fused:
            self._keep_packed(layer)
            return
        self._dequantize(layer)
        super().process_weights_after_loading(layer)  # the dense layer's packing (on CPU)
        if self.packed is not None:
            self.kernel = f"weights dequantized at load, {self.packed.kernel}"
        if reason is not None:  # a CUDA layer the kernel misses: the start-up log says why
            self.kernel = f"{WeightOnlyIntMethod.kernel} ({reason})"

    def _unfused_reason(self) -> str | None:
        """Why the fused kernel cannot run these weights (None: it can)."""
        try:
            from tachyon.kernels.quant_gemm import can_run
        except ImportError:
            return "triton is not installed"
        if self.args.strategy not in ("group", "channel") or not can_run(self.args.num_bits, self.group_size):
            return f"no fused kernel for {self.args.num_bits}-bit weights per {self.args.strategy} {self.group_size}"
        return None

    def _keep_packed(self, layer: Linear) -> None:
        from tachyon.kernels.quant_gemm import kernel_layout, quant_gemm

        zero_point = getattr(layer, "weight_zero_point", None)
        words, scale, zero_point = kernel_layout(
            layer.weight_packed.data, layer.weight_scale.data, None if zero_point is None else zero_point.data
        )
        layer.weight_packed, layer.weight_scale = frozen(words), frozen(scale)  # [K/P, N], [groups, N]
        if zero_point is not None:
            layer.weight_zero_point = frozen(zero_point)
        self.gemm = quant_gemm
        per = f"group {self.group_size}" if self.group_size else "channel"
        self.kernel = f"Triton W{self.args.num_bits}A16 GEMM, weights dequantized in registers (per {per})"

    def _dequantize(self, layer: Linear) -> None:
        q = unpack_int32(layer.weight_packed.data.cpu(), self.args.num_bits, layer.input_size)
        zero_point = getattr(layer, "weight_zero_point", None)
        zero_point = None if zero_point is None else zero_point.data.cpu()
        dense = dequantize(q, layer.weight_scale.data.cpu(), zero_point, self.args)
        layer.weight = frozen(dense.to(device=layer.weight_scale.device, dtype=self.dtype))
        del layer.weight_packed, layer.weight_scale
        if zero_point is not None:
            del layer.weight_zero_point

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return super().apply(layer, x)  # the dense path
        rows = x.reshape(-1, x.shape[-1])
        zero_point = getattr(layer, "weight_zero_point", None)
        y = self.gemm(rows, layer.weight_packed, layer.weight_scale, zero_point, self.args.num_bits, self.group_size)
        if layer.bias is not None:
            y = y + layer.bias
        return y.reshape(*x.shape[:-1], -1)
