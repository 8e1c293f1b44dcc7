"""Tachyon: an LLM inference engine, model compressor and validation toolkit.

`from tachyon import LLM, SamplingParams`; imported lazily so that light modules stay light.
"""

from __future__ import annotations

__all__ = ["LLM", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LLM":
        from tachyon.entrypoints.llm import LLM

        return LLM
    if name == "SamplingParams":
        from tachyon.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'tachyon' has no attribute {name!r}")
