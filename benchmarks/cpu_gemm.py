"""The native GEMM (tachyon/kernels/cpu_gemm.cpp) against oneDNN's prepacked GEMM, in one process.

Shapes are a decoder layer's (default: SmolLM2-135M's q/k/v, o, gate/up, down) and its LM head, at a
decode batch and a prefill chunk. "hot": the same weight every call (it stays in cache); "cold": the
layers' weights cycled, as a decode step reads them (from DRAM once they outgrow L3). Prints time per
call, GFLOP/s and the speedup over oneDNN.

    python benchmarks/cpu_gemm.py [--dtype bfloat16] [--rows 64 2048] [--hidden 576] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import time

import torch


def best_time(matmul, x: torch.Tensor, weights: list, cycle: bool, calls: int, repeats: int) -> float:
    """Seconds per `matmul(x, weight, None)`: the best of `repeats` rounds of `calls` calls, on the weights
    in turn (`cycle`) or on the first one every time."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            matmul(x, weights[i % len(weights) if cycle else 0], None)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 2048], help="batch rows (tokens) to time")
    parser.add_argument("--hidden", type=int, default=576, help="model hidden size")
    parser.add_argument("--heads", type=int, default=9, help="query heads (q/k/v output = (heads + 2 kv) x dim)")
    parser.add_argument("--kv-heads", type=int, default=3, help="key/value heads")
    parser.add_argument("--intermediate", type=int, default=1536, help="MLP intermediate size")
    parser.add_argument("--vocab", type=int, default=49152, help="LM head rows (0: skip)")
    parser.add_argument("--layers", type=int, default=30, help="weights cycled in the cold runs")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per measurement (the best is kept)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="weights and inputs")
    args = parser.parse_args()

    from tachyon.kernels import cpu_gemm
    from tachyon.layers.linear import onednn_linear

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    if not cpu_gemm.supports(dtype):
        raise SystemExit(f"the native {args.dtype} GEMM does not run here (no AVX-512 / AVX512_BF16, or no compiler)")
    head_dim = args.hidden // args.heads
    shapes = {
        "qkv": ((args.heads + 2 * args.kv_heads) * head_dim, args.hidden),
        "o": (args.hidden, args.hidden),
        "gate_up": (2 * args.intermediate, args.hidden),
        "down": (args.hidden, args.intermediate),
    }
    if args.vocab:
        shapes["lm_head"] = (args.vocab, args.hidden)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':>8} {'rows':>5} {'mode':>4}  {'native':>16}  {'oneDNN':>16}  speedup")
    gen = torch.Generator().manual_seed(0)
    for name, (out_features, in_features) in shapes.items():
        num = 1 if name == "lm_head" else args.layers  # one LM head: it is cold by size alone
        weights = [(torch.randn(out_features, in_features, generator=gen) * 0.05).to(dtype) for _ in range(num)]
        native = [cpu_gemm.pack(w) for w in weights]
        onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 64) for w in weights]
        for rows in args.rows:
            x = torch.randn(rows, in_features, generator=gen).to(dtype)
            flops = 2 * rows * out_features * in_features
            calls = max(1, min(num, int(2e10 // flops)))
            for mode in ("hot", "cold") if num > 1 else ("cold",):
                cycle = mode == "cold"
                ours = best_time(cpu_gemm.linear, x, native, cycle, calls, args.repeats)
                theirs = best_time(onednn_linear, x, onednn, cycle, calls, args.repeats)
                print(
                    f"{name:>8} {rows:>5} {mode:>4}  {ours * 1e6:8.0f} us {flops / ours / 1e9:4.0f} GF"
                    f"  {theirs * 1e6:8.0f} us {flops / theirs / 1e9:4.0f} GF  {theirs / ours:5.2f}x"
                )


if __name__ == "__main__":
    main()
