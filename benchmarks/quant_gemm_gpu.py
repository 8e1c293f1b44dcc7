"""Triton weight-only GEMM (tachyon.kernels.quant_gemm) against bf16 torch.matmul on a CUDA GPU (issue #4:
W4A16 batch-1 decode >= 2x bf16), on Llama-3.1-8B's projection shapes with random weights.

For each shape (K -> N: qkv 4096 -> 6144, o 4096 -> 4096, gate_up 4096 -> 28672, down 14336 -> 4096) and
batch M: microseconds per call of both, bytes moved per second and as a fraction of the device's measured
copy bandwidth, and the speedup; then the speedup of a whole decoder layer's four GEMMs. Each timing replays
a CUDA graph of calls that cycle through enough weight copies to overflow the L2 cache, so it is the GPU's
own time reading weights from HBM, as a decode step inside the engine's CUDA graphs sees it.

    python benchmarks/quant_gemm_gpu.py [--bits 4] [--group-size 128] [--batch 1,16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from tachyon.kernels.quant_gemm import quant_gemm
from tachyon.quantization.quantize import unpack_int32

LLAMA_8B_SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
ROTATE_BYTES = 1 << 30  # weight copies cycled per graph: far beyond any GPU's L2


def timed_graph(calls: list, repeat: int = 20) -> float:
    """Median seconds per call of `calls` (closures), captured once into a CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up: compile the kernel, settle the allocator
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    return statistics.median(times)


def copy_bandwidth(n: int = 1 << 28) -> float:
    """GB/s of a device-to-device copy of 512 MiB of bf16, bytes read plus written: the HBM ceiling."""
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * n * 2 / timed_graph([lambda: dst.copy_(src)]) / 1e9


def quantized_weights(in_features: int, out_features: int, bits: int, group_size: int) -> tuple:
    """Random packed words [K*bits/32, N] and float32 scales [K/group, N]: the kernel's layout."""
    shape = (in_features * bits // 32, out_features)
    words = torch.randint(-(1 << 31), 1 << 31, shape, dtype=torch.int32, device="cuda")
    return words, torch.rand(in_features // group_size, out_features, device="cuda") * 0.01 + 0.001


def check(x: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int) -> float:
    """Largest error of the kernel on the first 256 output columns against a float32 matmul of the unpacked
    weights, relative to the largest output (bf16 output rounding alone is ~4e-3)."""
    cols = 256
    y = quant_gemm(x, words, scale, None, bits, group_size)[:, :cols].float().cpu()
    q = unpack_int32(words[:, :cols].t().contiguous().cpu(), bits, x.shape[1]).float()  # [cols, K] signed
    weight = (q.unflatten(1, (-1, group_size)) * scale[:, :cols].t().cpu()[..., None]).flatten(1)
    expected = x.float().cpu() @ weight.T
    return ((y - expected).abs().max() / expected.abs().max()).item()


def bench_shape(in_features: int, out_features: int, rows: int, bits: int, group_size: int) -> dict:
    """Both GEMMs on one shape, weights cycled through enough copies to defeat L2."""
    x = torch.randn(rows, in_features, dtype=torch.bfloat16, device="cuda")
    dense_bytes = in_features * out_features * 2
    quant_bytes = in_features * out_features * bits // 8 + in_features // group_size * out_features * 4
    io_bytes = (in_features + out_features) * rows * 2
    dense = [
        torch.randn(out_features, in_features, dtype=torch.bfloat16, device="cuda") for _ in range(_copies(dense_bytes))
    ]
    dense_s = timed_graph([lambda w=w: torch.matmul(x, w.t()) for w in dense])
    del dense
    quant = [quantized_weights(in_features, out_features, bits, group_size) for _ in range(_copies(quant_bytes))]
    quant_s = timed_graph([lambda w=w, s=s: quant_gemm(x, w, s, None, bits, group_size) for w, s in quant])
    error = check(x, *quant[0], bits, group_size)
    del quant
    torch.cuda.empty_cache()
    return {
        "bf16_us": dense_s * 1e6,
        "quant_us": quant_s * 1e6,
        "bf16_GBps": (dense_bytes + io_bytes) / dense_s / 1e9,
        "quant_GBps": (quant_bytes + io_bytes) / quant_s / 1e9,
        "speedup": dense_s / quant_s,
        "max_rel_error": error,
    }


def _copies(num_bytes: int) -> int:
    return max(2, -(-ROTATE_BYTES // num_bytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=4, choices=(4, 8), help="weight bits (W4A16 or W8A16)")
    parser.add_argument("--group-size", type=int, default=128, help="input columns per scale")
    parser.add_argument("--batch", default="1,16", help="comma list of M, the rows per GEMM (decode batch)")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU; the kernel's correctness tests run on CPU: tests/kernels/test_quant_gemm.py")
    torch.manual_seed(0)
    peak = copy_bandwidth()
    name = f"W{args.bits}A16 g{args.group_size}"
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {peak:.0f} GB/s (the HBM ceiling)")
    print(f"{'shape':<18}{'M':>4}{'bf16 us':>10}{name + ' us':>16}{'bf16 GB/s':>11}{name + ' GB/s':>18}"
          f"{'% of copy':>10}{'speedup':>9}{'rel err':>9}")  # fmt: skip
    results: dict = {"device": torch.cuda.get_device_name(), "copy_GBps": peak, "scheme": name, "shapes": {}}
    for rows in (int(m) for m in args.batch.split(",")):
        layer_bf16 = layer_quant = 0.0
        for shape, (k, n) in LLAMA_8B_SHAPES.items():
            r = bench_shape(k, n, rows, args.bits, args.group_size)
            results["shapes"][f"{shape}_m{rows}"] = r
            layer_bf16, layer_quant = layer_bf16 + r["bf16_us"], layer_quant + r["quant_us"]
            print(f"{f'{shape} {k}x{n}':<18}{rows:>4}{r['bf16_us']:>10.1f}{r['quant_us']:>16.1f}"
                  f"{r['bf16_GBps']:>11.0f}{r['quant_GBps']:>18.0f}{r['quant_GBps'] / peak:>10.0%}"
                  f"{r['speedup']:>8.2f}x{r['max_rel_error']:>9.1e}")  # fmt: skip
        results[f"layer_speedup_m{rows}"] = layer_bf16 / layer_quant
        print(f"{'decoder layer':<18}{rows:>4}{layer_bf16:>10.1f}{layer_quant:>16.1f}{'':>39}"
              f"{layer_bf16 / layer_quant:>8.2f}x")  # fmt: skip
    print("issue #4 target: W4A16 batch-1 decode >= 2x bf16")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
