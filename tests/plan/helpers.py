"""Shared test inputs: the real-shaped configs kept in tests/data/configs and an independent
tensor-by-tensor listing of what a compressed-tensors checkpoint stores."""

from __future__ import annotations

import math
import os

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "data", "configs")
REAL_MODELS = ("Llama-3.1-8B", "Qwen2.5-7B", "Mistral-7B-v0.3")
SCHEMES = ("bf16", "W8A16", "W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC", "FP8")
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1}


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, name, "config.json")


def checkpoint_listing(cfg: dict, scheme: str, dense: str, group_size: int = 128) -> dict[str, tuple[tuple, str]]:
    """tensor name -> (shape, safetensors dtype) of the checkpoint `tachyon compress` / LLM Compressor
    writes for `cfg` under `scheme`, enumerated module by module (not by the planner's formulas)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    qwen2 = "Qwen2ForCausalLM" in cfg["architectures"]
    out: dict[str, tuple[tuple, str]] = {"model.embed_tokens.weight": ((cfg["vocab_size"], h), dense)}
    if not cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = ((cfg["vocab_size"], h), dense)
    out["model.norm.weight"] = ((h,), dense)
    linears = {
        "self_attn.q_proj": (heads * hd, h),
        "self_attn.k_proj": (kv_heads * hd, h),
        "self_attn.v_proj": (kv_heads * hd, h),
        "self_attn.o_proj": (h, heads * hd),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = ((h,), dense)
        out[f"{p}.post_attention_layernorm.weight"] = ((h,), dense)
        if qwen2:
            for m in ("q_proj", "k_proj", "v_proj"):
                out[f"{p}.self_attn.{m}.bias"] = ((linears[f"self_attn.{m}"][0],), dense)
        for m, shape in linears.items():
            out.update({f"{p}.{m}.{k}": v for k, v in _linear_tensors(shape, scheme, dense, group_size).items()})
    return out


def _linear_tensors(shape: tuple[int, int], scheme: str, dense: str, group_size: int) -> dict:
    rows, cols = shape
    if scheme == "bf16":
        return {"weight": (shape, dense)}
    if scheme in ("W8A16", "W4A16", "W4A16_ASYM"):
        bits = 8 if scheme == "W8A16" else 4
        groups = cols // group_size
        tensors = {
            "weight_packed": ((rows, math.ceil(cols * bits / 32)), "I32"),
            "weight_scale": ((rows, groups), dense),
            "weight_shape": ((2,), "I64"),
        }
        if scheme == "W4A16_ASYM":
            tensors["weight_zero_point"] = ((math.ceil(rows * bits / 32), groups), "I32")
        return tensors
    if scheme == "W8A8":
        return {"weight": (shape, "I8"), "weight_scale": ((rows, 1), dense)}
    if scheme == "FP8_DYNAMIC":
        return {"weight": (shape, "F8_E4M3"), "weight_scale": ((rows, 1), dense)}
    assert scheme == "FP8"
    return {"weight": (shape, "F8_E4M3"), "weight_scale": ((1,), dense), "input_scale": ((1,), dense)}


def listing_bytes(listing: dict[str, tuple[tuple, str]]) -> int:
    return sum(math.prod(shape) * ITEMSIZE[dtype] for shape, dtype in listing.values())
