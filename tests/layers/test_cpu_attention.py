"""The native CPU attention backend (decodes and verification rows in C++, longer prefill chunks through
PyTorch) against a naive float64 reference; how `auto` picks it; how its build is cached and falls back."""

import logging
import os

import pytest
import torch

from tachyon.kernels import cpu_gemm
from tachyon.kernels.native import load_native_library
from tachyon.layers.attention.backend import create_attention_backend
from tachyon.layers.attention.cpu_backend import CpuAttentionBackend
from tests.layers.attention_cases import make_case, reference_attention

CPU = torch.device("cpu")
SHAPES = [
    # query_lens, seq_lens, heads, kv_heads, head_dim, block_size
    ([1], [1], 4, 4, 64, 16),
    ([5, 1, 1, 17], [5, 40, 3, 33], 9, 3, 64, 16),  # prefill, decodes, a 17-token chunk over a cached prefix
    ([3, 3, 1], [19, 3, 64], 8, 2, 128, 8),  # speculative-style verification rows
    ([1, 2, 40], [100, 70, 40], 8, 1, 128, 32),  # 8 query heads per KV head; a prefill chunk beside them
    ([20, 1], [4200, 30], 4, 2, 64, 16),  # a long chunk over a long context: SDPA, unless bf16 on vdpbf16ps
    ([1] * 9, [7, 20, 33, 1, 2, 3, 50, 16, 17], 16, 16, 64, 16),  # many KV heads: tasks of 8 heads each
]


# builds: the one for this machine (bf16 on AMX tiles where the CPU has them), where it has AMX the
# vdpbf16ps path without, and (where it has AVX512_BF16) the portable bf16 path without either
BUILDS = [
    pytest.param(torch.float32, (), id="fp32"),
    pytest.param(torch.bfloat16, (), id="bf16"),
    pytest.param(torch.bfloat16, ("-mno-avx512bf16",), id="bf16-portable"),
]
if cpu_gemm.uses_amx(torch.bfloat16):
    BUILDS.append(pytest.param(torch.bfloat16, ("-mno-amx-tile",), id="bf16-no-amx"))


@pytest.mark.parametrize("dtype,extra_flags", BUILDS)
@pytest.mark.parametrize("query_lens,seq_lens,heads,kv_heads,head_dim,block_size", SHAPES)
def test_cpu_backend_matches_naive_reference(
    query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, extra_flags
):
    case = make_case(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype=dtype)
    expected, expected_cache = reference_attention(case)
    # the query as the model hands it over: a view into a wider qkv row, not a contiguous tensor
    qkv = torch.cat([case.query, torch.zeros_like(case.query[:, :1])], dim=1)
    backend = CpuAttentionBackend(extra_flags)
    out = backend.forward(qkv[:, :heads], case.key, case.value, case.kv_cache, case.meta, case.scale)
    assert backend.name == "cpu" and out.dtype == dtype
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1.6e-2}
    torch.testing.assert_close(out.double(), expected, **tol)
    torch.testing.assert_close(case.kv_cache.double(), expected_cache.to(dtype).double(), atol=0, rtol=0)


def test_auto_picks_the_native_kernel_on_cpu_and_says_why_not(caplog):
    assert create_attention_backend("auto", CPU, torch.bfloat16, 3, 64).name == "cpu"
    with caplog.at_level(logging.WARNING):
        assert create_attention_backend("auto", CPU, torch.float16, 3, 64).name == "torch"
        assert create_attention_backend("auto", CPU, torch.float32, 3, 96).name == "torch"
    assert "float16" in caplog.text and "of 96 dims" in caplog.text
    with pytest.raises(ValueError, match="of 96 dims"):
        create_attention_backend("cpu", CPU, torch.float32, 3, 96)


def test_build_is_cached_whole_and_an_unusable_cache_or_compiler_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TACHYON_CACHE_DIR", str(tmp_path))
    load_native_library.cache_clear()
    try:
        assert load_native_library("cpu_paged_attention.cpp") is not None
        built = os.listdir(tmp_path / "kernels")
        assert len(built) == 1 and built[0].endswith(".so")  # no partial file left behind
        load_native_library.cache_clear()
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("TACHYON_CACHE_DIR", str(tmp_path / "a-file"))  # a cache that cannot be written
        with caplog.at_level(logging.WARNING):
            assert load_native_library("cpu_paged_attention.cpp") is None
        assert "cannot write the kernel cache" in caplog.text
        load_native_library.cache_clear()
        monkeypatch.setenv("TACHYON_CXX", "no-such-compiler")
        with caplog.at_level(logging.WARNING):
            assert load_native_library("cpu_paged_attention.cpp") is None
            assert create_attention_backend("auto", CPU, torch.float32, 3, 64).name == "torch"
        assert "no-such-compiler" in caplog.text
    finally:
        load_native_library.cache_clear()
