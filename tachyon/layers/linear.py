"""Linear layers whose weights may arrive in pieces (fused QKV, fused gate/up), whose math is delegated to
a `LinearMethod` (dense or a quantized scheme), and which may be split across tensor-parallel ranks.

Column-parallel (q/k/v, gate/up): each rank holds a slice of every output shard's rows and computes those
outputs. Row-parallel (o_proj, down_proj): each rank holds a slice of the input columns, computes a
partial sum, and the ranks all-reduce it. Checkpoint tensors arrive whole; `Linear.rank_part` keeps this
rank's slice of each, whatever the method stores (packed codes, group scales, zero points): a tensor is cut
along the split dim unless it has one value there (a per-tensor or per-row scale every rank keeps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tachyon.distributed.parallel_state import all_reduce, shard_range, tp_rank, tp_size
from tachyon.kernels import cpu_gemm
from tachyon.layers.activation import silu_and_mul

NATIVE = "dense (native AVX-512 GEMM)"  # kernels/cpu_gemm: float32, and bf16 on CPUs with AVX512_BF16
NATIVE_AMX = "dense (native AMX GEMM)"  # kernels/cpu_gemm: bf16 on CPUs with AMX
PREPACKED = "dense (oneDNN prepacked)"
BATCH_INVARIANT = frozenset({NATIVE, NATIVE_AMX, PREPACKED})  # kernels whose rows come out the same in any batch
_DECODE_BATCH_HINT = 64  # the batch size oneDNN picks the layout for; any batch size runs on it


@dataclass(frozen=True)
class PackedDense:
    """A dense CPU weight reordered once at load for the GEMM that runs it, which then replaces it."""

    kernel: str
    weight: object  # what `matmul` takes: the native kernel's panels, or oneDNN's blocked tensor
    matmul: Callable[[torch.Tensor, object, torch.Tensor | None], torch.Tensor]
    # SiLU(gate) * up in the GEMM's epilogue, for a gate/up weight packed with its halves paired
    silu_and_mul: Callable[[torch.Tensor, object, torch.Tensor | None], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.matmul(x, self.weight, bias)


def pack_dense(weight: torch.Tensor, gate_up: bool = False) -> PackedDense | None:
    """A CPU float32/bfloat16 weight [out, in] packed for its GEMM, or None where neither applies.
    `gate_up`: the weight stacks a gate and an up projection; where the AMX kernel runs, it then also
    computes SiLU(gate) * up as it writes its output (`PackedDense.silu_and_mul`), so the MLP's
    intermediate activations are written once instead of twice and read once less.

    AVX-512 CPUs run the native kernel (kernels/cpu_gemm.cpp; bf16 needs AVX512_BF16, and runs on the AMX
    tile unit where the CPU has one): at decode sizes it is ahead of oneDNN, whose GEMMs stall on weights
    streaming from DRAM; on AMX the two are on par, and this one's rows are batch-invariant by
    construction. Elsewhere oneDNN's layout,
    reordered once instead of inside every call (F.linear reorders a bf16 weight each time and runs fp32
    through MKL): decode-sized GEMMs 10-45% faster, the LM head the most."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if cpu_gemm.supports(weight.dtype):
        halves = cpu_gemm.pack_halves(weight) if gate_up else None
        if halves is not None:
            return PackedDense(NATIVE_AMX, halves, cpu_gemm.linear, cpu_gemm.silu_and_mul)
        kernel = NATIVE_AMX if cpu_gemm.uses_amx(weight.dtype) else NATIVE
        return PackedDense(kernel, cpu_gemm.pack(weight), cpu_gemm.linear)
    if not torch.backends.mkldnn.is_available():
        return None
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _DECODE_BATCH_HINT)
    return PackedDense(PREPACKED, packed, onednn_linear)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, in] -> [T, out]. Each row's result is then the same bits whatever T is (which batch-invariant
    mode relies on): oneDNN's reduction order is fixed by the packed layout, except on its single-row fp32
    path, so a lone row runs as two (no slower: the weight is read once either way)."""
    if x.shape[0] == 1:
        return torch.ops.mkldnn._linear_pointwise(torch.cat([x, x]), packed, bias, "none", [], "")[:1]
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class LinearMethod:
    """Owns how a linear layer stores its weight and computes `x @ W.T + b`: dense here; the quantized
    methods (tachyon.layers.quantized_linear) store what a compressed checkpoint holds."""

    kernel = "dense"  # what runs the matmul, for the start-up log
    packed: PackedDense | None = None  # on CPU: the weight packed for its GEMM, which then replaces it

    def create_weights(self, layer: Linear, dtype: torch.dtype) -> None:
        layer.weight = frozen(torch.empty(layer.output_size, layer.input_size, dtype=dtype))

    def load(self, layer: Linear, param_name: str, loaded: torch.Tensor, shard_id: str | int | None) -> None:
        """Copy a checkpoint tensor into the shard's rows of a parameter (the whole of it if unsharded)."""
        if not isinstance(getattr(layer, param_name, None), torch.Tensor):
            raise ValueError(f"checkpoint tensor {param_name!r} has no place in a linear layer run by {self.kernel}")
        copy_rows(layer, getattr(layer, param_name), param_name, layer.rank_part(loaded), shard_id)

    def process_weights_after_loading(self, layer: Linear) -> None:
        """Once every shard is in: repack for the kernel (on CPU, `pack_dense`; the plain copy is dropped)."""
        self.packed = pack_dense(layer.weight, gate_up=layer.is_gate_up)
        if self.packed is not None:
            layer.weight = None
            self.kernel = self.packed.kernel

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(x, layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def apply_silu_and_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up of a gate/up layer: in the GEMM's epilogue where its packing allows."""
        if self.packed is not None and self.packed.silu_and_mul is not None:
            return self.packed.silu_and_mul(x, self.packed.weight, layer.bias)
        return silu_and_mul(self.apply(layer, x))


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def copy_rows(layer: Linear, param: torch.Tensor, name: str, loaded: torch.Tensor, shard_id: str | int | None) -> None:
    """Copy `loaded` into the rows (dim 0) of `param` that output shard `shard_id` owns."""
    if shard_id is None:
        target = param
    else:
        offset, size = layer.shard_offsets[shard_id]
        target = param.narrow(0, offset, size)
    if target.shape != loaded.shape:
        raise ValueError(f"shape mismatch loading {name}[{shard_id}]: {tuple(loaded.shape)} into {tuple(target.shape)}")
    target.copy_(loaded)


class Linear(nn.Module):
    """A linear layer built from one or more output shards, e.g. q/k/v stacked into one matmul.

    `shard_sizes` maps a shard id (as the checkpoint names it) to its number of output rows, in
    the order they are stacked. `parallel`: None (every rank holds it whole), "column" or "row".
    Sizes and offsets are this rank's.
    """

    def __init__(
        self,
        input_size: int,
        shard_sizes: dict[str | int, int],
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        method: LinearMethod | None = None,
        parallel: str | None = None,
    ) -> None:
        super().__init__()
        if parallel not in (None, "column", "row"):
            raise ValueError(f"parallel must be None, 'column' or 'row', got {parallel!r}")
        self.parallel = parallel if tp_size() > 1 else None
        self.checkpoint_sizes = (dict(shard_sizes), input_size)
        if self.parallel == "column":
            shard_sizes = {k: shard_range(n, f"output rows of {k or 'the layer'}")[1] for k, n in shard_sizes.items()}
        elif self.parallel == "row":
            input_size = shard_range(input_size, "input columns of a row-parallel layer")[1]
        self.input_size = input_size
        self.output_size = sum(shard_sizes.values())
        self.shard_offsets: dict[str | int, tuple[int, int]] = {}
        offset = 0
        for shard_id, size in shard_sizes.items():
            self.shard_offsets[shard_id] = (offset, size)
            offset += size
        self.method = method or LinearMethod()
        self.bias = frozen(torch.zeros(self.output_size, dtype=dtype)) if bias else None
        self.method.create_weights(self, dtype)

    def checkpoint_shape(self, shard_id: str | int | None) -> tuple[int, int]:
        """(rows, columns) of a shard as the checkpoint stores it, before any tensor-parallel split."""
        sizes, columns = self.checkpoint_sizes
        return (sum(sizes.values()) if shard_id is None else sizes[shard_id]), columns

    def rank_part(self, loaded: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a whole checkpoint tensor of this layer (all of it when not split)."""
        if self.parallel is None:
            return loaded
        dim = 0 if self.parallel == "column" else 1
        if loaded.dim() <= dim or loaded.shape[dim] == 1:
            return loaded
        start, size = shard_range(loaded.shape[dim], f"dim {dim} of a {tuple(loaded.shape)} checkpoint tensor")
        return loaded.narrow(dim, start, size)

    def load_shard(self, param_name: str, loaded: torch.Tensor, shard_id: str | int | None = None) -> None:
        """Take one checkpoint tensor of this layer (`weight`, `bias`, `weight_scale`, ...)."""
        if param_name == "bias":
            if self.parallel != "row" or tp_rank() == 0:  # a row-parallel bias is added once, by rank 0
                copy_rows(self, self.bias, param_name, self.rank_part(loaded), shard_id)
        else:
            self.method.load(self, param_name, loaded, shard_id)

    @property
    def is_gate_up(self) -> bool:
        """Stacks a gate and an up projection of one size, whose outputs an MLP takes as SiLU(gate) * up."""
        sizes = [size for _, size in self.shard_offsets.values()]
        return list(self.shard_offsets) == ["gate", "up"] and sizes[0] == sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.method.apply(self, x)
        return all_reduce(y) if self.parallel == "row" else y

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up of this gate/up layer's output [..., size], computed as the method sees fit."""
        if not self.is_gate_up or self.parallel == "row":
            raise ValueError("silu_and_mul needs a gate/up layer (shards 'gate' and 'up' of one size)")
        return self.method.apply_silu_and_mul(self, x)


def plain_linear(
    input_size: int,
    output_size: int,
    bias: bool = False,
    dtype: torch.dtype = torch.float32,
    method: LinearMethod | None = None,
) -> Linear:
    return Linear(input_size, {"": output_size}, bias=bias, dtype=dtype, method=method)


def finish_loading(model: nn.Module) -> None:
    """After every checkpoint tensor is in: each Linear's method repacks its weights for its kernel."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.method.process_weights_after_loading(module)
