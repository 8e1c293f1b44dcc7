"""Our compressed-tensors checkpoints against the library itself (pydantic config validation and its own
per-format decompression) and against HF transformers' loading; a tiny random Llama keeps it fast."""

from __future__ import annotations

import json
import os

import pytest
import torch
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tachyon.compress import compress_model
from tachyon.quantization import decompress

RTN_SCHEMES = ["W8A16", "W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC"]
# transformers 5 + compressed-tensors 0.20 build each module's compressed parameters on meta, and that
# path leaves the asymmetric zero point unpacked ([out, groups]) while the library's own compress packs it
# ([out*b/32, groups]): loading any pack-quantized ASYM checkpoint fails with a size mismatch.
HF_LOADABLE = ["W8A16", "W4A16", "W8A8", "FP8_DYNAMIC"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model_dir) -> str:
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("tiny") / "llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def compressed(tiny_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("compressed")
    return {s: compress_model(tiny_dir, s, str(root / s)) for s in RTN_SCHEMES}


def _config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        return json.load(f)["quantization_config"]


def _stored(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("scheme", RTN_SCHEMES)
def test_config_passes_library_validation(compressed, scheme):
    raw = _config(compressed[scheme])
    config = QuantizationConfig.model_validate(raw)
    assert raw["format"] in ("pack-quantized", "int-quantized", "float-quantized")
    assert config.quant_method == "compressed-tensors" and config.quantization_status == "compressed"
    assert config.ignore == ["lm_head"] and config.kv_cache_scheme is None
    assert config.config_groups["group_0"].targets == ["Linear"]


@pytest.mark.parametrize("scheme", RTN_SCHEMES)
def test_library_decompression_equals_ours(compressed, scheme):
    folder = compressed[scheme]
    raw = _config(folder)
    library_scheme = QuantizationConfig.model_validate(raw).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(raw["format"])
    stored, ours = _stored(folder), dict(decompress(folder))
    modules = sorted({n.rpartition(".")[0] for n in stored if n.endswith(".weight_scale")})
    assert len(modules) == 2 * 7
    for module in modules:
        local = {n.rpartition(".")[2]: t for n, t in stored.items() if n.rpartition(".")[0] == module}
        assert ("weight_zero_point" in local) == (scheme == "W4A16_ASYM")
        theirs = compressor.decompress(local, library_scheme)["weight"]
        assert theirs.dtype == ours[f"{module}.weight"].dtype
        assert torch.equal(theirs, ours[f"{module}.weight"]), module
    assert "model.embed_tokens.weight" in ours and not any("scale" in n for n in ours)


@pytest.mark.parametrize("scheme", RTN_SCHEMES)
def test_dequantized_weights_are_close_to_the_originals(tiny_dir, compressed, scheme):
    original = _stored(tiny_dir)
    for name, tensor in decompress(compressed[scheme]):
        # half a step of the coarsest scale: absmax / q_max / 2 (int), or e4m3's half-ulp (fp8)
        step = {"W4": 1 / 14, "W8": 1 / 254, "FP": 1 / 16}[scheme[:2]] if "proj" in name else 0.0
        assert (tensor - original[name]).abs().max() <= step * original[name].abs().max() + 1e-7, name


@pytest.mark.parametrize("scheme", HF_LOADABLE)
def test_transformers_loads_it_and_matches_the_dequantized_reference(tiny_dir, compressed, scheme):
    folder = compressed[scheme]
    reference = LlamaForCausalLM(LlamaConfig.from_pretrained(tiny_dir)).eval()
    missing, unexpected = reference.load_state_dict(dict(decompress(folder)), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    reference.tie_weights()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = model(ids).logits, reference(ids).logits
    if _config(folder)["config_groups"]["group_0"]["input_activations"] is None:
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    else:  # transformers also fake-quantizes the activations per token
        assert float((theirs - ours).abs().max()) <= 0.05 * float(ours.abs().max())


def test_transformers_cannot_load_asym_pack_quantized(compressed):
    with pytest.raises(RuntimeError, match="mismatch"):
        AutoModelForCausalLM.from_pretrained(compressed["W4A16_ASYM"], dtype=torch.float32)
