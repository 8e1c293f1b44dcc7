"""compress_model: argument errors before any work, overwrite refusal, atomic writes, and the default model
compressed with W4A16 (group 64: its hidden size 576 is not a multiple of 128)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file

from tachyon.compress import compress_model, pipeline
from tachyon.quantization.compressed_tensors import decompress_module
from tachyon.quantization.schemes import QuantArgs


def test_unknown_scheme_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown quantization scheme 'W3A3'; supported: W8A16, W4A16"):
        compress_model(str(tmp_path / "no-such-model"), "W3A3", str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_ragged_group_size_is_refused_before_writing(model_dir, tmp_path):
    with pytest.raises(ValueError, match="576 is not a multiple of group_size 128"):
        compress_model(model_dir, "W4A16", str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="overwrite=True"):
        compress_model(model_dir, "W8A8", str(out))
    assert (out / "keep.txt").read_text() == "mine"


def test_interrupted_run_leaves_nothing(model_dir, tmp_path, monkeypatch):
    calls = []

    def failing(weight, scheme, qparams=None):
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("simulated crash mid-write")
        return real(weight, scheme, qparams)

    real = pipeline.compress_weight
    monkeypatch.setattr(pipeline, "compress_weight", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compress_model(model_dir, "W8A8", str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []  # neither the output nor the hidden partial folder


def test_default_model_w4a16(model_dir, tmp_path):
    (tmp_path / "w4").mkdir()
    (tmp_path / "w4" / "stale.txt").write_text("old run")
    out = compress_model(model_dir, "W4A16", str(tmp_path / "w4"), group_size=64, overwrite=True)
    assert out == str(tmp_path / "w4") and os.listdir(tmp_path) == ["w4"] and not os.path.exists(f"{out}/stale.txt")
    assert {"tokenizer.json", "generation_config.json", "config.json"} <= set(os.listdir(out))
    stored = load_file(os.path.join(out, "model.safetensors"))
    packed = [n for n in stored if n.endswith(".weight_packed")]
    assert len(packed) == 30 * 7 and "lm_head.weight" not in stored and "model.embed_tokens.weight" in stored
    assert not any(n.endswith("zero_point") for n in stored)
    dense = load_file(os.path.join(model_dir, "model.safetensors"))
    linear_bytes = sum(dense[n.replace("_packed", "")].numel() * 2 for n in packed)  # as fp16
    quant_bytes = sum(stored[n].nbytes for n in stored if "proj" in n)
    assert 0.25 < quant_bytes / linear_bytes < 0.25 + 2 / 64 + 0.01  # 4 bits + one fp32 scale per 64
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)["quantization_config"]
    scheme = QuantizationConfig.model_validate(raw).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"):
        local = {s: stored[f"{module}.{s}"] for s in ("weight_packed", "weight_scale", "weight_shape")}
        ours = decompress_module(
            local, QuantArgs.from_config(raw["config_groups"]["group_0"]["weights"]), raw["format"]
        )
        assert torch.equal(compressor.decompress(local, scheme)["weight"], ours)
