"""Reads a llama.cpp GGUF file as a Hugging Face model: the config from its metadata, the tokenizer
through transformers, and the tensors dequantized to float32 under HF parameter names.
`tachyon.models.loader` calls it for `.gguf` files (and `tachyon.models.convert` through the loader).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType, ReaderTensor
from gguf.quants import dequantize
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)


class ModelLoadError(ValueError):
    """A model path, config or weight file that cannot be loaded; the message names the path and the fault.
    Lives here, the lowest loading module, and is re-exported by `tachyon.models.loader`."""


class GGUFArchitecture(NamedTuple):
    config_class: type[PretrainedConfig]
    hf_architecture: str
    permuted_qk: bool  # llama.cpp's converter reorders q/k rows for llama only


ARCHITECTURES = {
    "llama": GGUFArchitecture(LlamaConfig, "LlamaForCausalLM", True),
    "qwen2": GGUFArchitecture(Qwen2Config, "Qwen2ForCausalLM", False),
    "qwen3": GGUFArchitecture(Qwen3Config, "Qwen3ForCausalLM", False),
}

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1+ rope scaling, folded into the config, not a weight
_EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def open_gguf(path: str) -> GGUFReader:
    """Parse the header, metadata and tensor index (tensor data stays memory-mapped)."""
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def read_field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """One metadata value as a Python value; float32 values come back as their shortest decimal (1e-05)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    if field.types == [GGUFValueType.FLOAT32]:
        return float(str(np.float32(value)))
    return value


def gguf_architecture(reader: GGUFReader, path: str) -> str:
    arch = read_field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    return arch


def gguf_config(reader: GGUFReader, path: str) -> PretrainedConfig:
    """The HF config (LlamaConfig / Qwen2Config / Qwen3Config) that the file's metadata describes."""
    arch = gguf_architecture(reader, path)

    def need(key: str) -> Any:
        value = read_field(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    hidden, num_heads = need("embedding_length"), need("attention.head_count")
    head_dim = read_field(reader, f"{arch}.attention.key_length") or hidden // num_heads
    tensor_names = {t.name for t in reader.tensors}
    kwargs = dict(
        architectures=[ARCHITECTURES[arch].hf_architecture],
        vocab_size=read_field(reader, f"{arch}.vocab_size") or _num_tokens(reader, path),
        hidden_size=hidden,
        intermediate_size=need("feed_forward_length"),
        num_hidden_layers=need("block_count"),
        num_attention_heads=num_heads,
        num_key_value_heads=read_field(reader, f"{arch}.attention.head_count_kv", num_heads),
        head_dim=head_dim,
        rms_norm_eps=need("attention.layer_norm_rms_epsilon"),
        max_position_embeddings=need("context_length"),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=read_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=read_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=read_field(reader, "tokenizer.ggml.padding_token_id"),
        dtype="float32",
        **_rope_kwargs(reader, arch, head_dim, path),
    )
    if arch == "llama":
        kwargs["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    return ARCHITECTURES[arch].config_class(**kwargs)


def _num_tokens(reader: GGUFReader, path: str) -> int:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(f"{path}: GGUF metadata has neither a vocab_size nor a tokenizer.ggml.tokens list")
    return len(tokens.data)


def _rope_kwargs(reader: GGUFReader, arch: str, head_dim: int, path: str) -> dict:
    theta = read_field(reader, f"{arch}.rope.freq_base", 10000.0)
    kwargs: dict[str, Any] = {"rope_theta": theta}
    kind = read_field(reader, f"{arch}.rope.scaling.type", "none")
    if kind == "linear":
        kwargs["rope_scaling"] = {
            "rope_type": "linear",
            "factor": read_field(reader, f"{arch}.rope.scaling.factor"),
        }
    elif kind != "none":
        raise ModelLoadError(f"{path}: GGUF rope scaling type {kind!r} is not supported (none, linear)")
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is not None:
        kwargs["rope_scaling"] = _llama3_rope_scaling(np.asarray(freqs.data, np.float64), theta, head_dim, path)
    return kwargs


def _llama3_rope_scaling(divisors: np.ndarray, theta: float, head_dim: int, path: str) -> dict:
    """Llama 3.1+ GGUFs carry rope scaling as a `rope_freqs` tensor of per-frequency divisors instead of
    metadata. Meta's released models all use low/high freq factors 1 and 4 over an 8192 original
    context, so assume those, take `factor` from the tensor, and check the result reproduces it."""
    scaling = {
        "rope_type": "llama3",
        "factor": float(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    if not np.allclose(llama3_rope_divisors(theta, head_dim, scaling), divisors, rtol=1e-5):
        raise ModelLoadError(f"{path}: its rope_freqs tensor does not match Llama 3 rope scaling")
    return scaling


def llama3_rope_divisors(theta: float, head_dim: int, s: dict) -> np.ndarray:
    """What llama.cpp's converter stores in `rope_freqs`: 1 for short wavelengths, `factor` for long
    ones, and a smooth blend in between."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    old_len, factor = s["original_max_position_embeddings"], s["factor"]
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = 1 / ((1 - smooth) / factor + smooth)
    long_wave, short_wave = (
        wavelen > old_len / s["low_freq_factor"],
        wavelen < old_len / s["high_freq_factor"],
    )
    return np.where(short_wave, 1.0, np.where(long_wave, factor, blended))


def gguf_generation_config(reader: GGUFReader) -> dict:
    """bos/pad ids and every end-of-sequence id (eos, end-of-turn, end-of-message) the file names."""
    eos = [read_field(reader, key) for key in _EOS_KEYS]
    config = {
        "bos_token_id": read_field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(dict.fromkeys(i for i in eos if i is not None)),
        "pad_token_id": read_field(reader, "tokenizer.ggml.padding_token_id"),
    }
    return {key: value for key, value in config.items() if value not in (None, [])}


def gguf_tokenizer(reader: GGUFReader, path: str) -> PreTrainedTokenizerBase:
    """The tokenizer transformers builds from the file's metadata, with the file's chat template."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: cannot build a tokenizer from the GGUF metadata: {e}") from e
    template = read_field(reader, "tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer


def hf_tensor_name(gguf_name: str, path: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match[2] not in _BLOCK_TENSORS:
        raise ModelLoadError(f"{path}: GGUF tensor {gguf_name!r} has no Hugging Face counterpart")
    return f"model.layers.{match[1]}.{_BLOCK_TENSORS[match[2]]}.{match[3]}"


@dataclass(frozen=True)
class GGUFWeights:
    """A GGUF file's tensor index, iterable as (HF name, float32 CPU tensor) one tensor at a time. The data
    stays memory-mapped, and the parsed metadata (~150 MB of Python objects for a 49k-token vocabulary)
    is not kept, so a ModelSource can hold this cheaply."""

    path: str
    permuted_qk: bool
    heads: dict[str, int]  # q_proj / k_proj -> number of heads, for undoing llama.cpp's row order
    tensors: tuple[ReaderTensor, ...]
    names: tuple[str, ...]  # HF names, checked up front so an unknown tensor fails at load, not mid-stream

    @classmethod
    def from_reader(cls, reader: GGUFReader, hf_config: PretrainedConfig, path: str) -> GGUFWeights:
        tensors = tuple(t for t in reader.tensors if t.name != _ROPE_FREQS)
        return cls(
            path=path,
            permuted_qk=ARCHITECTURES[gguf_architecture(reader, path)].permuted_qk,
            heads={"q_proj": hf_config.num_attention_heads, "k_proj": hf_config.num_key_value_heads},
            tensors=tensors,
            names=tuple(hf_tensor_name(t.name, path) for t in tensors),
        )

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in zip(self.names, self.tensors, strict=True):
            yield name, self._load(name, tensor)

    def get(self, name: str) -> torch.Tensor:
        """One tensor by HF name (layer-by-layer compression reads a layer at a time)."""
        return self._load(name, self.tensors[self.names.index(name)])

    def _load(self, name: str, tensor: ReaderTensor) -> torch.Tensor:
        weight = _dequantize(tensor, self.path)
        module = name.split(".")[-2]
        if self.permuted_qk and module in self.heads:
            weight = unpermute_qk(weight, self.heads[module])
        return torch.from_numpy(weight)


def _dequantize(tensor: ReaderTensor, path: str) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest-first
    try:
        data = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise ModelLoadError(f"{path}: cannot dequantize {tensor.name} ({tensor.tensor_type.name}): {e}") from e
    if not data.flags.writeable:  # F32 comes back as a view of the read-only memory map
        data = data.copy()
    return data.astype(np.float32, copy=False).reshape(shape)


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order. Its converter interleaves the two rotary halves of each head
    for GGML's rope; HF's rotate_half rope keeps them apart. Per head of D rows:

        GGUF rows: a0 b0 a1 b1 ... a(D/2-1) b(D/2-1)   ->   HF rows: a0 a1 ... a(D/2-1) b0 b1 ... b(D/2-1)
    """
    rows = weight.shape[0]
    # [H, D/2, 2, ...] -> [H, 2, D/2, ...]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
