"""Peak resident memory of layer-by-layer (sequential) calibration against the whole-model approach, on the
same job: the same recipe, calibration data and model, `--pipeline sequential` vs `--pipeline whole_model`.

    .venv/bin/python benchmarks/compression_memory.py [--model DIR] [--samples 16] [--seq-len 256]

Without --model it writes a random-weight model of TinyLlama-1.1B's shape (22 layers, hidden 2048,
intermediate 5632, 32 heads / 4 KV heads; SmolLM2's 49152-token vocabulary, whose tokenizer it borrows),
bf16 on disk. Each run is its own process; the table gives its peak RSS (VmHWM) and the part above the
same process's RSS before compressing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

RECIPE = [("GPTQModifier", {"scheme": "W4A16", "group_size": 64})]


def write_random_model(folder: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tachyon.models.loader import load_model_source

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    load_model_source(None).tokenizer.save_pretrained(folder)  # the default model's tokenizer: same vocab size
    return folder


def compress_child(model: str, pipeline: str, output: str, samples: int, seq_len: int) -> None:
    from tachyon.compress import oneshot
    from tachyon.compress.entrypoints import peak_rss_bytes
    from tachyon.compress.modifiers import create_modifier

    before = peak_rss_bytes()
    modifiers = [create_modifier(name, dict(params)) for name, params in RECIPE]
    report = oneshot(
        model, modifiers, output_dir=output, num_calibration_samples=samples, max_seq_length=seq_len,
        pipeline=pipeline, overwrite=True,
    )  # fmt: skip
    print(json.dumps({"peak": report.peak_rss_bytes, "before": before, "seconds": report.seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: write a random TinyLlama-shaped one)")
    parser.add_argument("--samples", type=int, default=8, help="calibration documents (default 8)")
    parser.add_argument("--seq-len", type=int, default=256, help="max tokens per document (default 256)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # PIPELINE OUTPUT: compress once
    args = parser.parse_args()
    if args.child:
        return compress_child(args.model, args.child[0], args.child[1], args.samples, args.seq_len)
    work = tempfile.mkdtemp(prefix="tachyon-compress-memory-")
    model = args.model or write_random_model(os.path.join(work, "random-tinyllama"))
    rows = []
    for pipeline in ("sequential", "whole_model"):
        command = [sys.executable, __file__, "--model", model, "--samples", str(args.samples)]
        command += ["--seq-len", str(args.seq_len), "--child", pipeline, os.path.join(work, pipeline)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        rows.append((pipeline, json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"model {model}; {args.samples} samples x <= {args.seq_len} tokens; recipe {RECIPE}")
    print("| pipeline | peak RSS | above start | time |\n|---|---|---|---|")
    for pipeline, r in rows:
        print(
            f"| {pipeline} | {r['peak'] / 2**20:.0f} MiB | {(r['peak'] - r['before']) / 2**20:.0f} MiB | "
            f"{r['seconds']:.0f} s |"
        )
    ratio = rows[0][1]["peak"] / rows[1][1]["peak"]
    print(f"sequential / whole_model peak: {ratio:.2f}")


if __name__ == "__main__":
    main()
