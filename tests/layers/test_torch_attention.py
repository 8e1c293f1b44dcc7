import pytest
import torch

from tachyon.layers.attention.backend import create_attention_backend
from tests.layers.attention_cases import make_case, reference_attention

SHAPES = [
    # query_lens, seq_lens, heads, kv_heads, head_dim, block_size
    ([1], [1], 4, 4, 32, 16),
    ([5, 1, 1, 17], [5, 40, 3, 33], 9, 3, 64, 16),  # prefill, decodes, chunk over a cached prefix
    ([3, 3, 1], [19, 3, 64], 8, 2, 16, 8),  # speculative-style verification groups
    ([33, 1], [100, 1], 6, 1, 128, 32),
]


@pytest.mark.parametrize("query_lens,seq_lens,heads,kv_heads,head_dim,block_size", SHAPES)
def test_torch_backend_matches_naive_reference(query_lens, seq_lens, heads, kv_heads, head_dim, block_size):
    case = make_case(query_lens, seq_lens, heads, kv_heads, head_dim, block_size)
    expected, expected_cache = reference_attention(case)
    backend = create_attention_backend("torch", torch.device("cpu"))
    out = backend.forward(case.query, case.key, case.value, case.kv_cache, case.meta, case.scale)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(case.kv_cache.double(), expected_cache, atol=0, rtol=0)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="torch"):
        create_attention_backend("flash9", torch.device("cpu"))
