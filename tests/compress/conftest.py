"""A shallow copy of the default model for compression tests: its first layers with their real weights (so
activations have the real outliers the algorithms exist for), small enough to calibrate in seconds."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

SHALLOW_LAYERS = 3


@pytest.fixture(scope="session")
def shallow_model_dir(model_dir, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shallow") / "smollm2-3-layers"
    folder.mkdir()
    for name in os.listdir(model_dir):  # tokenizer, chat template, generation config
        if name not in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(model_dir, name), folder / name)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["num_hidden_layers"] = SHALLOW_LAYERS
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f)
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    kept = {
        n: t for n, t in tensors.items() if not n.startswith("model.layers.") or int(n.split(".")[2]) < SHALLOW_LAYERS
    }
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return str(folder)
