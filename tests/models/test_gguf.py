"""GGUF loading and GGUF -> HF folder conversion, checked against HF transformers' own GGUF loader on the
default model (Q4_1 / Q8_0 / F32) and against tiny random transformers models written as GGUF here."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config
from transformers.integrations.gguf.reader import read_gguf_metadata

from tachyon.models.convert import convert_gguf, save_first_layers, save_model_source
from tachyon.models.gguf import GGUFWeights, hf_tensor_name, unpermute_qk
from tachyon.models.loader import ModelLoadError, ModelSource, load_model_source

CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "model_type",
)
TEXTS = ["Hello, world!", "naïve café — 東京 🚀 ünïcödé", "  two  spaces\n\ttab and 12345 digits"]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? Ünïcode ✓"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks"},
]
PROMPT_IDS = torch.tensor([[1, 9690, 198, 4093, 314, 253, 2, 198, 1, 4093]])


def assert_config_matches(ours: PretrainedConfig, reference: PretrainedConfig) -> None:
    for name in CONFIG_FIELDS:
        assert getattr(ours, name) == getattr(reference, name), name
    head_dim = getattr(reference, "head_dim", None) or reference.hidden_size // reference.num_attention_heads
    assert ours.head_dim == head_dim
    assert ours.rms_norm_eps == pytest.approx(reference.rms_norm_eps, rel=1e-6)


def assert_weights_equal(source: ModelSource, expected: dict[str, torch.Tensor], dtype=torch.float32) -> None:
    seen = []
    for name, tensor in source.iter_weights():
        assert tensor.device.type == "cpu" and tensor.dtype == dtype, name
        assert torch.equal(tensor, expected[name]), name
        seen.append(name)
    tied = source.hf_config.tie_word_embeddings
    assert sorted(seen) == sorted(n for n in expected if not (tied and n == "lm_head.weight"))


# --- the default model, against transformers' own GGUF loading -------------------------------------


@pytest.fixture(scope="module")
def source() -> ModelSource:
    return load_model_source()


def test_default_model_is_the_gguf(source, gguf_path):
    assert source.path == gguf_path and isinstance(source.weights, GGUFWeights)
    assert source.hf_config.architectures == ["LlamaForCausalLM"]
    assert source.hf_config.dtype == torch.float32


def test_weights_equal_transformers_dequantization(source, hf_gguf_model):
    assert_weights_equal(source, hf_gguf_model.state_dict())


def test_config_matches_transformers(source, hf_gguf_model):
    assert_config_matches(source.hf_config, hf_gguf_model.config)
    assert source.hf_config.rms_norm_eps == 1e-5  # float32 metadata read back as its shortest decimal


def test_tokenizer_matches_transformers(source, hf_tokenizer, gguf_path):
    for text in TEXTS:
        assert source.tokenizer.encode(text) == hf_tokenizer.encode(text), text
    metadata, _ = read_gguf_metadata(gguf_path)  # transformers' fast reader, a second opinion on the file
    assert source.tokenizer.chat_template == metadata["tokenizer.chat_template"]
    ours = source.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours == hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert source.tokenizer.encode(ours) == hf_tokenizer.encode(ours)


def test_generation_config_and_eos(source):
    assert source.generation_config == {"bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 2}
    assert source.eos_token_ids == [2]


# --- conversion of the default model to an HF folder -----------------------------------------------


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> str:
    """convert_gguf minus the load_model_source `source` has done (tiny models test convert_gguf itself)."""
    return save_model_source(source, str(tmp_path_factory.mktemp("convert") / "smollm2"))


def test_converted_folder_matches_gguf(converted, hf_gguf_model, hf_tokenizer):
    assert sorted(os.listdir(os.path.dirname(converted))) == ["smollm2"]  # no partial folder left behind
    assert os.stat(os.path.join(converted, "model.safetensors")).st_mode & 0o777 == 0o644
    folder = load_model_source(converted)
    assert folder.weights is None and folder.hf_config.architectures == ["LlamaForCausalLM"]
    assert_config_matches(folder.hf_config, hf_gguf_model.config)
    assert_weights_equal(folder, hf_gguf_model.state_dict())
    for text in TEXTS:
        assert folder.tokenizer.encode(text) == hf_tokenizer.encode(text), text
    ours = folder.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours == hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert folder.eos_token_ids == [2]


def test_converted_folder_loads_in_transformers(converted, hf_gguf_model):
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT_IDS).logits, hf_gguf_model(PROMPT_IDS).logits, atol=1e-5, rtol=0)


def test_first_layers_folder_equals_transformers_truncating_the_model(shallow_model_dir, model_dir, tmp_path):
    """`save_first_layers` (the draft / shallow test model) against HF loading the full checkpoint with
    fewer layers."""
    shallow = AutoModelForCausalLM.from_pretrained(shallow_model_dir, dtype=torch.float32).eval()
    truncated = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, num_hidden_layers=3).eval()
    assert shallow.config.num_hidden_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(shallow(PROMPT_IDS).logits, truncated(PROMPT_IDS).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_layers"):
        save_first_layers(model_dir, 0, str(tmp_path / "none"))


def test_convert_refuses_a_non_empty_folder(gguf_path, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*not empty.*overwrite"):
        convert_gguf(gguf_path, str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "precious"


# --- tiny random transformers models written as GGUF ------------------------------------------------

TOKENS = sorted(ByteLevel.alphabet()) + ["he", "ll", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot|>"]
BOS, EOS, EOT = len(TOKENS) - 4, len(TOKENS) - 2, len(TOKENS) - 1
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)
TINY = dict(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)


def tiny_config(arch: str) -> PretrainedConfig:
    common = TINY | dict(num_key_value_heads=2, rms_norm_eps=1e-6, bos_token_id=BOS, eos_token_id=EOS)
    if arch == "llama":  # untied, q/k/v/o biases, Llama 3.1 rope scaling
        rope = dict(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, max_position_embeddings=131072)
        return LlamaConfig(**common, **rope, head_dim=16, attention_bias=True, tie_word_embeddings=False)
    if arch == "qwen2":  # tied, q/k/v biases
        return Qwen2Config(**common, tie_word_embeddings=True, max_position_embeddings=512, rope_theta=1e6)
    return Qwen3Config(**common, head_dim=32, tie_word_embeddings=True, max_position_embeddings=512)  # q/k norms


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, the transform our loader must undo."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(
    path: str,
    arch: str,
    model: torch.nn.Module,
    rope_freqs: np.ndarray | None = None,
    rope_scaling: tuple[str, float] | None = None,
) -> None:
    """Write `model` the way llama.cpp's converter would, naming tensors with gguf-py's own name map."""
    cfg = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    if arch == "qwen3":
        writer.add_key_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * (len(TOKENS) - 4) + [3] * 4)
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_eot_token_id(EOT)
    writer.add_chat_template(TEMPLATE)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
        writer.add_rope_scaling_factor(rope_scaling[1])
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    for name, tensor in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        module, suffix = name.rsplit(".", 1)
        data = tensor.numpy()
        if arch == "llama" and module.rsplit(".", 1)[-1] in heads:
            data = llama_cpp_permute(data, heads[module.rsplit(".", 1)[-1]])
        writer.add_tensor(
            f"{names.get_name(module)}.{suffix}", data.astype(np.float16 if "down" in name else np.float32)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0, 0.5 if "norm" in name else 0.05)
            if "down_proj" in name:
                param.copy_(param.half().float())  # exactly representable in the F16 we store them as
    return model


def llama3_divisors(model: torch.nn.Module) -> np.ndarray:
    """What llama.cpp stores as rope_freqs, from transformers' own llama3 inverse frequencies."""
    cfg = model.config
    default = 1.0 / cfg.rope_parameters["rope_theta"] ** (torch.arange(0, cfg.head_dim, 2).double() / cfg.head_dim)
    return (default / model.model.rotary_emb.inv_freq.double()).numpy()


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory) -> tuple[str, torch.nn.Module, ModelSource]:
    arch = request.param
    model = tiny_model(arch)
    path = str(tmp_path_factory.mktemp(arch) / f"tiny-{arch}.gguf")
    write_gguf(path, arch, model, rope_freqs=llama3_divisors(model) if arch == "llama" else None)
    return path, model, load_model_source(path)


def test_tiny_gguf_config(tiny):
    _, model, source = tiny
    assert_config_matches(source.hf_config, model.config)
    assert source.hf_config.architectures == [type(model).__name__]
    assert getattr(source.hf_config, "attention_bias", False) == getattr(model.config, "attention_bias", False)


def test_tiny_gguf_weights_are_restored(tiny):
    _, model, source = tiny
    assert_weights_equal(source, model.state_dict())


def test_tiny_gguf_logits_match_the_original(tiny):
    _, model, source = tiny
    rebuilt = AutoModelForCausalLM.from_config(source.hf_config).eval()
    result = rebuilt.load_state_dict(dict(source.iter_weights()), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == (
        ["lm_head.weight"] if source.hf_config.tie_word_embeddings else []
    )
    ids = torch.tensor([[BOS, 10, 200, 256, 257, 3, EOS]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_tiny_gguf_tokenizer_and_eos(tiny):
    _, _, source = tiny
    assert source.tokenizer.convert_ids_to_tokens(source.tokenizer.encode("hello")) == ["he", "ll", "o"]
    assert source.tokenizer.chat_template == TEMPLATE
    assert source.generation_config["eos_token_id"] == [EOS, EOT]
    assert source.eos_token_ids == [EOS, EOT]


def test_convert_shards_and_overwrites(tiny, tmp_path):
    path, model, source = tiny
    out = str(tmp_path / "out")
    assert convert_gguf(path, out, max_shard_bytes=60_000) == out
    files = os.listdir(out)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
    assert_weights_equal(load_model_source(out), model.state_dict())
    with pytest.raises(ModelLoadError, match="not empty"):
        convert_gguf(path, out)
    convert_gguf(path, out, overwrite=True)
    assert "model.safetensors" in os.listdir(out) and "model.safetensors.index.json" not in os.listdir(out)
    assert_weights_equal(load_model_source(out), model.state_dict())
    assert os.listdir(tmp_path) == ["out"]


# --- errors and the pieces of the format ------------------------------------------------------------


def test_unsupported_gguf_architecture(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=f"{path}.*'gpt2' is not supported.*llama, qwen2, qwen3"):
        load_model_source(path)


def test_truncated_gguf(gguf_path, tmp_path):
    path = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as f:
        path.write_bytes(f.read(1000))
    with pytest.raises(ModelLoadError, match=f"{path}: not a readable GGUF file"):
        load_model_source(str(path))


def test_rope_freqs_that_are_not_llama3_are_refused(tmp_path):
    model = tiny_model("llama")
    path = str(tmp_path / "odd-rope.gguf")
    write_gguf(path, "llama", model, rope_freqs=np.linspace(1.0, 3.0, model.config.head_dim // 2))
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        load_model_source(path)


def test_rope_scaling_metadata(tmp_path):
    path = str(tmp_path / "linear.gguf")
    write_gguf(path, "qwen2", tiny_model("qwen2"), rope_scaling=("linear", 4.0))
    rope = load_model_source(path).hf_config.rope_parameters
    assert rope == {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}
    write_gguf(path, "qwen2", tiny_model("qwen2"), rope_scaling=("yarn", 4.0))
    with pytest.raises(ModelLoadError, match="rope scaling type 'yarn' is not supported"):
        load_model_source(path)


def test_convert_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        convert_gguf(str(tmp_path / "absent.gguf"), str(tmp_path / "out"))


@pytest.mark.parametrize(
    "gguf_name, hf_name",
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("blk.12.attn_output.weight", "model.layers.12.self_attn.o_proj.weight"),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
        ("blk.3.attn_q_norm.weight", "model.layers.3.self_attn.q_norm.weight"),
        ("blk.1.ffn_norm.weight", "model.layers.1.post_attention_layernorm.weight"),
    ],
)
def test_tensor_names(gguf_name, hf_name):
    assert hf_tensor_name(gguf_name, "f.gguf") == hf_name


def test_unknown_tensor_name():
    with pytest.raises(ModelLoadError, match="blk.0.ffn_gate_exps.weight"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight", "moe.gguf")


@pytest.mark.parametrize("shape, num_heads", [((12, 5), 3), ((64, 64), 4), ((16,), 2), ((8, 3), 1)])
def test_unpermute_inverts_llama_cpp(shape, num_heads):
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    permuted = llama_cpp_permute(weight, num_heads)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(unpermute_qk(permuted, num_heads), weight)
