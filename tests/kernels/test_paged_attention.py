"""Triton paged attention against the naive float64 reference, on many small random paged batches.

Without a GPU the kernels run on CPU tensors in Triton's interpreter, so TRITON_INTERPRET must be
set before triton is first imported (torch may already be). Shapes stay small: the interpreter is slow.
"""

import dataclasses
import os
import random

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if ON_GPU else "cpu"
triton = pytest.importorskip("triton")

from tachyon.kernels.paged_attention import paged_attention, plan_tiles, write_kv  # noqa: E402
from tachyon.kernels.triton_runtime import interpreted  # noqa: E402
from tachyon.layers.attention.backend import create_attention_backend  # noqa: E402
from tests.layers.attention_cases import make_case, reference_attention  # noqa: E402

if not ON_GPU and not interpreted():
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set", allow_module_level=True)

SHAPES = [
    # query_lens, seq_lens, heads, kv_heads, head_dim, block_size
    ([1, 1, 1, 1], [1, 17, 40, 64], 9, 3, 64, 16),  # decode-only, the default model's heads
    ([1, 1, 1], [33, 5, 63], 8, 2, 128, 32),  # decode-only, GQA 4
    ([37], [37], 4, 4, 64, 16),  # one prefill, no GQA
    ([20, 7], [20, 7], 9, 3, 64, 32),  # two prefills in one batch
    ([16, 9], [48, 30], 6, 2, 64, 16),  # chunks over cached prefixes
    ([5, 1, 1, 17], [5, 40, 3, 33], 9, 3, 64, 16),  # mixed: prefill, decodes, chunk
    ([3, 3, 1, 4], [19, 3, 64, 50], 8, 2, 128, 16),  # speculative verification, GQA 4
    ([33, 1], [100, 1], 9, 1, 64, 32),  # GQA 9, the long case
    ([2, 5], [30, 61], 9, 1, 128, 16),  # GQA 9, head_dim 128
    ([4, 1], [12, 30], 4, 2, 80, 16),  # head_dim that is not a power of two
    ([3, 1], [21, 9], 4, 1, 32, 8),  # block_size smaller than the kernel's key tile
]
FP16_SHAPES = [SHAPES[0], SHAPES[5], SHAPES[6], SHAPES[7]]


def run_and_compare(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, atol, seed=0):
    args = (query_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype, seed)
    expected, expected_cache = reference_attention(make_case(*args))  # float64 on CPU
    case = make_case(*args, device=DEVICE)
    write_kv(case.key, case.value, case.kv_cache, case.meta.slot_mapping)
    out = paged_attention(case.query, case.kv_cache, case.meta, case.scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), expected, atol=atol, rtol=atol)
    torch.testing.assert_close(case.kv_cache.cpu().double(), expected_cache, atol=0, rtol=0)


@pytest.mark.parametrize("query_lens,seq_lens,heads,kv_heads,head_dim,block_size", SHAPES)
def test_float32_matches_reference(query_lens, seq_lens, heads, kv_heads, head_dim, block_size):
    run_and_compare(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, torch.float32, atol=1e-4)


@pytest.mark.parametrize("query_lens,seq_lens,heads,kv_heads,head_dim,block_size", FP16_SHAPES)
def test_float16_matches_reference(query_lens, seq_lens, heads, kv_heads, head_dim, block_size):
    run_and_compare(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, torch.float16, atol=1e-2)


@pytest.mark.skipif(not ON_GPU, reason="the Triton interpreter multiplies bfloat16 as raw uint16 bits")
@pytest.mark.parametrize("query_lens,seq_lens,heads,kv_heads,head_dim,block_size", FP16_SHAPES)
def test_bfloat16_matches_reference(query_lens, seq_lens, heads, kv_heads, head_dim, block_size):
    run_and_compare(query_lens, seq_lens, heads, kv_heads, head_dim, block_size, torch.bfloat16, atol=3e-2)


@pytest.mark.parametrize("seed", range(24))
def test_random_mixed_batches(seed):
    """Random mixes of decodes, verifications, prefills and chunks; every fourth in float16."""
    rng = random.Random(seed)
    kv_heads, group = rng.choice([(1, 1), (4, 1), (2, 3), (3, 3), (1, 4), (2, 4), (1, 9)])
    head_dim, block_size = rng.choice([64, 64, 128, 32]), rng.choice([16, 32])
    query_lens, seq_lens = [], []
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["decode", "verify", "prefill", "chunk"])
        seq_len = rng.randint(1, 64)
        q_len = {"decode": 1, "verify": rng.randint(2, 5), "chunk": rng.randint(1, 24)}.get(kind, seq_len)
        query_lens.append(min(q_len, seq_len))
        seq_lens.append(seq_len)
    dtype, atol = (torch.float16, 1e-2) if seed % 4 == 3 else (torch.float32, 1e-4)
    shape = (query_lens, seq_lens, kv_heads * group, kv_heads, head_dim, block_size)
    run_and_compare(*shape, dtype, atol=atol, seed=seed)


def test_padding_slots_are_never_read():
    """Cache slots past each sequence's length may hold NaN (torch.empty); they must not leak in."""
    shape = ([3, 1, 6], [19, 33, 6], 9, 3, 64, 16)
    expected, _ = reference_attention(make_case(*shape))
    case = make_case(*shape, device=DEVICE)
    flat = case.kv_cache.flatten(1, 2)  # [2, num_slots, H_kv, D]
    used = torch.zeros(flat.shape[1], dtype=torch.bool)
    for b, seq_len in enumerate(case.meta.seq_lens_cpu):
        pos = torch.arange(seq_len)
        table = case.meta.block_tables[b].long().cpu()
        used[table[pos // 16] * 16 + pos % 16] = True
    flat[:, ~used.to(DEVICE)] = float("nan")
    write_kv(case.key, case.value, case.kv_cache, case.meta.slot_mapping)
    out = paged_attention(case.query, case.kv_cache, case.meta, case.scale)
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-4, rtol=1e-4)


def test_strided_query_and_given_out():
    """Query as a view into a fused QKV projection, output written into a caller's buffer."""
    shape = ([4, 1], [20, 9], 8, 2, 64, 16)
    expected, _ = reference_attention(make_case(*shape))
    case = make_case(*shape, device=DEVICE)
    qkv = torch.zeros(case.query.shape[0], 12, 64, device=DEVICE)  # [T, H + 2 * H_kv, D]
    qkv[:, :8] = case.query
    out = torch.full((case.query.shape[0], 8, 64), float("nan"), device=DEVICE)
    write_kv(case.key, case.value, case.kv_cache, case.meta.slot_mapping)
    result = paged_attention(qkv[:, :8], case.kv_cache, case.meta, case.scale, out=out)
    assert result is out
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_skips_negative_slots(dtype):
    case = make_case([3, 2], [7, 18], 4, 2, 32, 16, dtype=dtype, device=DEVICE)
    before = case.kv_cache.clone()
    slots = case.meta.slot_mapping.clone()
    slots[1] = -1  # a padding token
    write_kv(case.key, case.value, case.kv_cache, slots)
    flat, flat_before = case.kv_cache.flatten(1, 2), before.flatten(1, 2)
    keep = slots >= 0
    assert torch.equal(flat[0][slots[keep]], case.key[keep])
    assert torch.equal(flat[1][slots[keep]], case.value[keep])
    assert torch.equal(flat[:, case.meta.slot_mapping[1]], flat_before[:, case.meta.slot_mapping[1]])
    changed = (flat != flat_before).flatten(2).any(-1).any(0)  # [num_slots]
    assert changed.nonzero().flatten().tolist() == sorted(slots[keep].tolist())


def test_tile_plan_cuts_each_sequence_into_query_tiles():
    case = make_case([1, 30, 2], [9, 40, 2], 9, 3, 64, 16)
    plan = plan_tiles(case.meta, group=3, device=torch.device("cpu"))
    assert (plan.block_m, plan.block_q) == (64, 21)
    assert plan.tile_map.tolist() == [[0, 0], [1, 0], [1, 21], [2, 0]]
    decode = make_case([1, 1], [9, 40], 9, 1, 64, 16)
    plan = plan_tiles(decode.meta, group=9, device=torch.device("cpu"))
    assert (plan.block_m, plan.block_q, plan.tile_map.tolist()) == (16, 1, [[0, 0], [1, 0]])


def test_backend_matches_torch_backend_over_two_steps():
    """Registered as "triton"; a prefill then a decode step on the same cache, like the model runner."""
    triton_backend = create_attention_backend("triton", torch.device(DEVICE))
    torch_backend = create_attention_backend("torch", torch.device(DEVICE))
    assert triton_backend.name == "triton"
    for shape in [([6, 11], [6, 11], 9, 3, 64, 16), ([1, 1], [7, 12], 9, 3, 64, 16)]:
        case = make_case(*shape, device=DEVICE)
        cache_copy = case.kv_cache.clone()
        out = triton_backend.forward(case.query, case.key, case.value, case.kv_cache, case.meta, case.scale)
        meta = dataclasses.replace(case.meta, plan=None)  # each backend keeps its own plan on the metadata
        ref = torch_backend.forward(case.query, case.key, case.value, cache_copy, meta, case.scale)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(case.kv_cache, cache_copy)
