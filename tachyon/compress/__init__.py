"""Model compression in the manner of LLM Compressor: recipes of modifiers (GPTQ, AWQ, SmoothQuant,
SparseGPT, round-to-nearest, magnitude pruning, static fp8 scales) applied layer by layer over calibration
data, written as compressed-tensors checkpoints that Tachyon, vLLM and transformers load. Users call
`oneshot` (or the data-free `compress_model`); `tachyon compress` is the command line."""

from tachyon.compress.entrypoints import CompressionReport, compress_model, oneshot
from tachyon.compress.modifiers import (
    AWQModifier,
    GPTQModifier,
    MagnitudePruningModifier,
    Modifier,
    QuantizationModifier,
    SmoothQuantModifier,
    SparseGPTModifier,
)
from tachyon.compress.recipe import Recipe

__all__ = [
    "AWQModifier",
    "CompressionReport",
    "GPTQModifier",
    "MagnitudePruningModifier",
    "Modifier",
    "QuantizationModifier",
    "Recipe",
    "SmoothQuantModifier",
    "SparseGPTModifier",
    "compress_model",
    "oneshot",
]
