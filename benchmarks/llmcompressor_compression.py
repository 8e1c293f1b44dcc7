"""LLM Compressor's own GPTQ-W4A16 and SparseGPT 2:4 on the same model, calibration tokens and settings as
`benchmarks/compression_quality.py` gives Tachyon, for the side-by-side table in docs/quantization.md.

LLM Compressor pins its own compressed-tensors and transformers, so this runs in a separate venv:

    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor
    /tmp/llmc/bin/python benchmarks/llmcompressor_compression.py MODEL_DIR SAMPLES_JSON OUT_DIR RECIPE

MODEL_DIR is an HF folder (`tachyon convert` of the default GGUF model); SAMPLES_JSON a list of token id
lists; RECIPE `gptq_w4a16` or `sparsegpt_2of4`. Prints one JSON line: seconds and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import time


def recipe(name: str, group_size: int):
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    if name == "gptq_w4a16":
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
        groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
        return GPTQModifier(
            config_groups=groups, ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder="static"
        )
    if name == "sparsegpt_2of4":
        return SparseGPTModifier(
            sparsity=0.5, mask_structure="2:4", ignore=["lm_head"], block_size=128, dampening_frac=0.01
        )
    raise SystemExit(f"unknown recipe {name}")


def peak_rss_bytes() -> int:
    """VmHWM: unlike ru_maxrss it does not count what the forking parent had resident."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("samples_json", help="calibration token ids: a JSON list of lists")
    parser.add_argument("out_dir")
    parser.add_argument("recipe", choices=["gptq_w4a16", "sparsegpt_2of4"])
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(args.samples_json, encoding="utf-8") as f:
        samples = json.load(f)
    dataset = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=recipe(args.recipe, args.group_size),
        num_calibration_samples=len(samples),
        max_seq_length=max(len(s) for s in samples),
    )
    model.save_pretrained(args.out_dir, save_compressed=True)
    tokenizer.save_pretrained(args.out_dir)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}))


if __name__ == "__main__":
    main()
