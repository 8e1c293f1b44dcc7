"""The fused elementwise Triton kernels compile for a real GPU (sm_90, Hopper) on a machine without one.

The other kernel tests run them in Triton's interpreter, which checks their arithmetic but not that
Triton's compiler accepts them (types, constexprs, what lowers to PTX). Compiling needs the interpreter
off, so it runs in a subprocess; Triton's wheel carries ptxas, so this goes all the way to a cubin.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tachyon.kernels import fused_elementwise as fe

TARGET = GPUTarget("cuda", 90, 32)
CONSTEXPRS = {
    fe._rms_norm_kernel: {"HAS_RESIDUAL": True, "BLOCK": 4096},
    fe._rotary_kernel: {"Q_HEADS": 32, "K_HEADS": 8, "Q_HEADS_PAD": 32, "K_HEADS_PAD": 8, "HALF": 64, "HALF_PAD": 64},
    fe._silu_and_mul_kernel: {"BLOCK": 1024},
}
FIXED = {"positions_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "eps": "fp32", "hidden": "i32", "size": "i32"}


def signature(kernel, dtype):
    constexprs = CONSTEXPRS[kernel]
    return {
        name: "constexpr" if name in constexprs else FIXED.get(name, dtype if name.endswith("_ptr") else "i64")
        for name in kernel.arg_names
    }


for kernel, constexprs in CONSTEXPRS.items():
    for dtype in ("*bf16", "*fp16", "*fp32"):
        source = ASTSource(fn=kernel, signature=signature(kernel, dtype), constexprs=constexprs)
        compiled = triton.compile(source, target=TARGET, options={"enable_fp_fusion": False})
        assert compiled.asm["cubin"], kernel.__name__
        if kernel is fe._rotary_kernel and dtype == "*fp32":
            # x * cos + rotate_half(x) * sin as two roundings, as PyTorch computes it: no fused multiply-add
            assert "fma." not in compiled.asm["ptx"], "the rotary kernel fused a multiply-add"
        print(kernel.__name__, dtype, "compiled")
"""


def test_fused_elementwise_kernels_compile_for_hopper(tmp_path):
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton wheel carries no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 9
