"""Make checkpoints with LLM Compressor itself, for the interoperability tests and measurements.

LLM Compressor pins its own compressed-tensors and transformers, so run this in a separate venv:

    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor
    /tmp/llmc/bin/python benchmarks/llmcompressor_checkpoints.py MODEL_DIR OUT_DIR [--schemes ...]

MODEL_DIR is an HF folder (`tachyon convert` turns the default GGUF model into one). Writes OUT_DIR/<scheme>
for each scheme: LLM Compressor's data-free `QuantizationModifier` (round to nearest, like `tachyon compress`),
`lm_head` ignored, weight groups of `--group-size` (576, SmolLM2's width, is not a multiple of 128).
`--tiny` instead builds a small random Llama (the CI fixtures in tests/data/llmcompressor).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch


def weight_only_group(bits: int, group_size: int) -> dict:
    weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def save_tiny_llama(folder: str) -> str:
    """2 layers, width 128, vocab 512: random weights scaled so that logits are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="HF folder of the model to compress (ignored with --tiny)")
    parser.add_argument("out_dir", help="where OUT_DIR/<scheme> folders are written")
    parser.add_argument("--schemes", nargs="+", default=["W8A8", "FP8_DYNAMIC", "W4A16"], help="LLM Compressor presets")
    parser.add_argument("--group-size", type=int, default=64, help="weight group size of W4A16 / W8A16")
    parser.add_argument("--tiny", action="store_true", help="compress a small random Llama instead of model_dir")
    args = parser.parse_args()

    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    source = save_tiny_llama(tempfile.mkdtemp()) if args.tiny else args.model_dir
    for scheme in args.schemes:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        if scheme in ("W4A16", "W8A16"):
            bits = int(scheme[1])
            recipe = QuantizationModifier(config_groups=weight_only_group(bits, args.group_size), ignore=["lm_head"])
        else:
            recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
        oneshot(model=model, recipe=recipe)
        out = os.path.join(args.out_dir, scheme)
        model.save_pretrained(out, save_compressed=True)
        print(f"{scheme}: wrote {out}")


if __name__ == "__main__":
    main()
