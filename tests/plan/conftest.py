"""The default model's config, read once from its GGUF metadata for all planner tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_config() -> dict:
    from tachyon.models.gguf import gguf_config, open_gguf
    from tachyon.models.loader import default_model_path

    path = default_model_path()
    return gguf_config(open_gguf(path), path).to_dict()
