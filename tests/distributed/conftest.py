"""A model that splits in two: tensor-parallel tests need head counts the default model's 9 / 3 lack."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaConfig

from tests.reference import save_tiny_model


@pytest.fixture(scope="package")
def tiny_dir(model_dir, tmp_path_factory) -> str:
    """4 query / 2 KV heads (splits in two), an untied LM head, and the default model's tokenizer."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("tp") / "tiny"
    save_tiny_model(config, path, AutoTokenizer.from_pretrained(model_dir))
    return str(path)
