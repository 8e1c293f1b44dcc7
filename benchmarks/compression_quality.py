"""Calibrated compression vs round-to-nearest (and vs LLM Compressor) on the default model: held-out
perplexity, size on disk, time and peak memory per recipe; writes the table into docs/quantization.md.

    .venv/bin/python benchmarks/compression_quality.py [--samples 64] [--seq-len 512] [--only NAME ...]
        [--llmcompressor-python /tmp/llmc/bin/python] [--write-docs]

Calibration: the lee_background articles (`tachyon.compress` default); evaluation: perplexity on the
disjoint lee.cor articles (`tachyon eval --task lee`), by our engine for every checkpoint, LLM Compressor's
too. Each compression runs in its own process, so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile

KV = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
# name -> (scheme label, algorithm label, recipe as a list of (modifier, params))
RECIPES = {
    "rtn_w4a16": ("W4A16 g64", "RTN", [("QuantizationModifier", {"scheme": "W4A16", "group_size": 64})]),
    "gptq_w4a16": ("W4A16 g64", "GPTQ", [("GPTQModifier", {"scheme": "W4A16", "group_size": 64})]),
    "awq_w4a16": (
        "W4A16 g64",
        "AWQ",
        [("AWQModifier", {"scheme": "W4A16", "group_size": 64, "num_search_tokens": 2048})],
    ),
    "rtn_w8a8": ("W8A8", "RTN", [("QuantizationModifier", {"scheme": "W8A8"})]),
    "smoothquant_w8a8": (
        "W8A8",
        "SmoothQuant 0.5 + RTN",
        [("SmoothQuantModifier", {"smoothing_strength": 0.5}), ("QuantizationModifier", {"scheme": "W8A8"})],
    ),
    "smoothquant_gptq_w8a8": (
        "W8A8",
        "SmoothQuant 0.5 + GPTQ",
        [("SmoothQuantModifier", {"smoothing_strength": 0.5}), ("GPTQModifier", {"scheme": "W8A8"})],
    ),
    "magnitude_2of4": ("2:4", "magnitude", [("MagnitudePruningModifier", {"mask_structure": "2:4"})]),
    "sparsegpt_2of4": ("2:4", "SparseGPT", [("SparseGPTModifier", {"mask_structure": "2:4"})]),
    "sparsegpt_gptq_2of4_w4a16": (
        "2:4 + W4A16 g64",
        "SparseGPT + GPTQ",
        [("SparseGPTModifier", {"mask_structure": "2:4"}), ("GPTQModifier", {"scheme": "W4A16", "group_size": 64})],
    ),
    "fp8_static_kv": (
        "FP8 + fp8 KV scales",
        "RTN + static scales",
        [("QuantizationModifier", {"scheme": "FP8", "kv_cache_scheme": KV})],
    ),
}
LLMC_RECIPES = {
    "llmc_gptq_w4a16": ("W4A16 g64", "LLM Compressor GPTQ"),
    "llmc_sparsegpt_2of4": ("2:4", "LLM Compressor SparseGPT"),
}
TABLE_BEGIN, TABLE_END = "<!-- compression-table:begin -->", "<!-- compression-table:end -->"


def compress_one(name: str, output: str, samples: int, seq_len: int) -> None:
    """Child process: run one recipe, print its report as JSON."""
    from tachyon.compress import oneshot
    from tachyon.compress.modifiers import create_modifier

    modifiers = [create_modifier(m, dict(p)) for m, p in RECIPES[name][2]]
    report = oneshot(
        None, modifiers, output_dir=output, num_calibration_samples=samples, max_seq_length=seq_len, overwrite=True
    )
    print(json.dumps({"seconds": report.seconds, "peak_rss_bytes": report.peak_rss_bytes}))


def _run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def perplexity_of(model: str | None) -> float:
    from tachyon import LLM
    from tachyon.corpus import evaluation_text
    from tachyon.evals.perplexity import perplexity

    llm = LLM(model=model)
    try:
        return perplexity(llm, evaluation_text()).ppl
    finally:
        del llm
        gc.collect()


def disk_bytes(folder: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "*.safetensors")))


def llmcompressor_runs(python: str, work: str, samples: int, seq_len: int, results: dict) -> None:
    from tachyon.compress.calibration_data import calibration_samples
    from tachyon.models.convert import convert_gguf
    from tachyon.models.loader import default_model_path, load_model_source

    dense = os.path.join(work, "dense_hf")
    if not os.path.isdir(dense):
        convert_gguf(default_model_path(), dense)
    tokens = calibration_samples(load_model_source(None).tokenizer, None, samples, seq_len)  # what oneshot uses
    samples_path = os.path.join(work, "samples.json")
    with open(samples_path, "w", encoding="utf-8") as f:
        json.dump(tokens, f)
    script = os.path.join(os.path.dirname(__file__), "llmcompressor_compression.py")
    for name in LLMC_RECIPES:
        out = os.path.join(work, name)
        print(f"[{name}] compressing with LLM Compressor", file=sys.stderr)
        report = _run_json([python, script, dense, samples_path, out, name.removeprefix("llmc_")])
        results[name] = {**report, "size": disk_bytes(out), "ppl": perplexity_of(out)}
        print(f"[{name}] {results[name]}", file=sys.stderr)


def table(results: dict, dense_ppl: float, dense_size: int, args) -> str:
    lines = [
        f"Default model (SmolLM2-135M-Instruct, fp32 as stored); calibration: {args.samples} lee_background "
        f"articles, at most {args.seq_len} tokens each; perplexity on the disjoint lee.cor (50 articles, "
        "window 1024, stride 512) by Tachyon's engine, for LLM Compressor's checkpoints too. Machine: 2-core "
        "AMD EPYC VM, no GPU; times are wall clock with other jobs sharing the cores (upper bounds); peak "
        "memory is each compressing process's VmHWM.",
        "",
        "| scheme | algorithm | lee ppl ↓ | Δ vs dense | size on disk | time | peak memory |",
        "|---|---|---|---|---|---|---|",
        f"| dense | — | {dense_ppl:.3f} | — | {dense_size / 2**20:.0f} MiB | — | — |",
    ]
    labels = {n: r[:2] for n, r in RECIPES.items()} | LLMC_RECIPES
    for name in [n for n in labels if n in results]:
        r = results[name]
        scheme, algorithm = labels[name]
        delta = (r["ppl"] / dense_ppl - 1) * 100
        lines.append(
            f"| {scheme} | {algorithm} | {r['ppl']:.3f} | {delta:+.1f}% | {r['size'] / 2**20:.0f} MiB | "
            f"{r['seconds']:.0f} s | {r['peak_rss_bytes'] / 2**20:.0f} MiB |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "quantization.md")
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    block = f"{TABLE_BEGIN}\n{text}\n{TABLE_END}"
    if TABLE_BEGIN in doc:
        doc = doc[: doc.index(TABLE_BEGIN)] + block + doc[doc.index(TABLE_END) + len(TABLE_END) :]
    else:
        doc += f"\n{block}\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="calibration documents (default 64)")
    parser.add_argument("--seq-len", type=int, default=512, help="max tokens per calibration document (default 512)")
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="run only these recipes")
    parser.add_argument("--work-dir", default=None, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--llmcompressor-python", default=None, help="python of a venv with llmcompressor")
    parser.add_argument("--write-docs", action="store_true", help="put the table into docs/quantization.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: compress one recipe
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return compress_one(args.one, args.output, args.samples, args.seq_len)
    work = args.work_dir or tempfile.mkdtemp(prefix="tachyon-compress-bench-")
    results_path = os.path.join(work, "results.json")
    results: dict = {}
    if os.path.exists(results_path):  # --only reruns some recipes; the table keeps the others' rows
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    for name in args.only or RECIPES:
        out = os.path.join(work, name)
        print(f"[{name}] compressing", file=sys.stderr)
        child = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--output",
            out,
            "--samples",
            str(args.samples),
            "--seq-len",
            str(args.seq_len),
        ]
        report = _run_json(child)
        results[name] = {**report, "size": disk_bytes(out), "ppl": perplexity_of(out)}
        print(f"[{name}] {results[name]}", file=sys.stderr)
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    if args.llmcompressor_python:
        llmcompressor_runs(args.llmcompressor_python, work, args.samples, args.seq_len, results)
    dense_dir = os.path.join(work, "dense_hf")
    if not os.path.isdir(dense_dir):
        from tachyon.models.convert import convert_gguf
        from tachyon.models.loader import default_model_path

        convert_gguf(default_model_path(), dense_dir)
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    text = table(results, perplexity_of(None), disk_bytes(dense_dir), args)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
