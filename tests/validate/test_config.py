"""Validation settings: group size from the layer widths, engine flags rendered back as typed, and a bad
scheme, workload or output folder refused before any work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tachyon.config import EngineConfig
from tachyon.validate.config import ValidateConfig, Workload, engine_flags, pick_group_size


def _hf_config(hidden: int, heads: int, intermediate: int, head_dim: int | None = None):
    return SimpleNamespace(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate, head_dim=head_dim
    )


@pytest.mark.parametrize(
    ("config", "requested", "expected"),
    [
        (_hf_config(576, 9, 1536), None, 64),  # SmolLM2-135M: 576 = 9 x 64
        (_hf_config(4096, 32, 14336), None, 128),  # Llama-3-8B
        (_hf_config(2048, 16, 5632, head_dim=128), None, 128),
        (_hf_config(960, 15, 2560), None, 64),  # SmolLM2-360M
        (_hf_config(100, 4, 300), None, -1),  # nothing divides: per channel
        (_hf_config(576, 9, 1536), 32, 32),  # an explicit --group-size wins
    ],
)
def test_group_size_divides_every_layer_width(config, requested, expected):
    assert pick_group_size(config, requested) == expected


def test_engine_flags_are_the_differences_from_the_defaults():
    config = EngineConfig(max_model_len=512, kv_cache_memory=1 << 28, enable_prefix_caching=False, dtype="bfloat16")
    assert engine_flags(config, EngineConfig()) == [
        *("--dtype", "bfloat16", "--max-model-len", "512"),
        *("--no-enable-prefix-caching", "--kv-cache-memory", str(1 << 28)),
    ]
    assert engine_flags(EngineConfig(model="x"), EngineConfig()) == []


def test_schemes_are_canonical_and_checked(tmp_path):
    config = ValidateConfig(model=None, output=str(tmp_path / "r"), schemes=("w8a16", "W4A16"))
    assert config.schemes == ("W8A16", "W4A16")
    with pytest.raises(ValueError, match="unknown quantization scheme 'W3A7'"):
        ValidateConfig(model=None, output=str(tmp_path / "r"), schemes=("W3A7",))
    with pytest.raises(ValueError, match="repeats a scheme"):
        ValidateConfig(model=None, output=str(tmp_path / "r"), schemes=("W8A16", "w8a16"))


def test_existing_output_needs_overwrite(tmp_path):
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        ValidateConfig(model=None, output=str(tmp_path))
    assert ValidateConfig(model=None, output=str(tmp_path), overwrite=True).overwrite


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_prompts": 0}, "--num-prompts must be at least 1"),
        ({"output_tokens": 0}, "--output-tokens must be at least 1"),
        ({"concurrency": ()}, "--concurrency needs levels"),
        ({"concurrency": (1, 0)}, "--concurrency needs levels"),
    ],
)
def test_bad_workload_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Workload(**kwargs)
