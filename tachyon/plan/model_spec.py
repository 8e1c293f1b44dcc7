"""A model's shape as the planner needs it, read from its config alone: a config.json file, a local HF
folder, a .gguf file, the default model (None) or a Hub id (only config.json is downloaded). The
planner (`planner.py`) and the CLI call `load_model_spec`; `model_spec_from_config` takes a dict.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelSpec", "load_model_spec", "model_spec_from_config"]

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_QKV_BIAS_ARCHS = ("Qwen2ForCausalLM",)  # Qwen2 always has q/k/v biases, whatever attention_bias says
_QK_NORM_ARCHS = ("Qwen3ForCausalLM",)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    stored_dtype: str | None = None  # the checkpoint's torch_dtype / dtype

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each decoder Linear, as named in checkpoints."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (self.q_size, h),
            "k_proj": (self.kv_size, h),
            "v_proj": (self.kv_size, h),
            "o_proj": (h, self.q_size),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }

    @property
    def linear_params_per_layer(self) -> int:
        return sum(o * i for o, i in self.linear_shapes().values())


def model_spec_from_config(config: dict[str, Any], name: str = "model") -> ModelSpec:
    """A ModelSpec from config.json's fields; a missing field is a ValueError naming it."""
    missing = [k for k in _REQUIRED if not isinstance(config.get(k), int)]
    if missing:
        raise ValueError(f"{name}: config lacks {', '.join(missing)} (needed to size the model)")
    heads = config["num_attention_heads"]
    archs = config.get("architectures") or []
    return ModelSpec(
        name=name,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings") or 4096,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=any(a in _QKV_BIAS_ARCHS for a in archs) or bool(config.get("attention_bias")),
        o_bias=bool(config.get("attention_bias")),
        mlp_bias=bool(config.get("mlp_bias")),
        qk_norm=any(a in _QK_NORM_ARCHS for a in archs),
        stored_dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def load_model_spec(model: str | None) -> ModelSpec:
    """The spec of `model`: None (the default model), a config.json, a folder holding one, a .gguf file,
    or a Hub id (config.json alone is downloaded)."""
    if model is None:
        from tachyon.models.loader import DEFAULT_MODEL_NAME, default_model_path

        return _gguf_spec(default_model_path(), DEFAULT_MODEL_NAME)
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{model}: no config.json in this folder")
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return _gguf_spec(path, os.path.basename(path))
        return model_spec_from_config(_read_json(path), _display_name(model))
    if _HUB_ID.fullmatch(model):
        return model_spec_from_config(_read_json(_download_config(model)), model)
    raise ValueError(f"{model!r}: no such file or folder, and not a Hugging Face Hub id (owner/name)")


def _display_name(model: str) -> str:
    path = os.path.abspath(os.path.expanduser(model))
    return os.path.basename(os.path.dirname(path) if path.endswith(".json") else path)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a config object")
    return config.get("text_config") or config


def _gguf_spec(path: str, name: str) -> ModelSpec:
    from tachyon.models.gguf import gguf_config, open_gguf

    return model_spec_from_config(gguf_config(open_gguf(path), path).to_dict(), name)


def _download_config(model_id: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model_id, "config.json")
    except (OSError, ValueError) as e:  # offline, unknown repo, gated
        raise ValueError(f"{model_id!r}: fetching its config.json from the Hugging Face Hub failed: {e}") from e
