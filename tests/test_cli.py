"""`tachyon` console commands as a user runs them: the default model (the embedded GGUF) end to end."""

from __future__ import annotations

import os
import subprocess
import sys

from tachyon import LLM, SamplingParams


def _tachyon(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tachyon.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_generate_on_default_model_matches_the_offline_api(model_dir):
    run = _tachyon("generate", "--prompt", "The capital of France is", "--max-tokens", "12")
    assert run.returncode == 0, run.stderr
    assert "KV cache:" in run.stderr and "blocks =" in run.stderr and "max concurrency" in run.stderr
    expected = LLM(model_dir).generate("The capital of France is", SamplingParams(temperature=0, max_tokens=12))
    assert expected[0].outputs[0].text in run.stdout


def test_generate_with_speculative_decoding_prints_acceptance_and_rejects_bad_configs(model_dir):
    prompt = "Say it again: the cat sat on the mat. Say it again:"
    spec = '{"method": "ngram", "num_speculative_tokens": 3}'
    run = _tachyon("generate", model_dir, "--prompt", prompt, "--max-tokens", "12", "--speculative-config", spec)
    assert run.returncode == 0, run.stderr
    plain = LLM(model_dir).generate(prompt, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].text
    assert plain in run.stdout
    assert "[speculative decoding:" in run.stderr and "draft tokens accepted" in run.stderr
    bad = _tachyon("generate", "--speculative-config", '{"method": "eagle"}')
    assert bad.returncode == 2 and "method" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_help_explains_every_flag():
    run = _tachyon("generate", "--help")
    assert run.returncode == 0
    for flag in (
        "--max-model-len",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--kv-cache-memory",
        "--gpu-memory-utilization",
        "--enable-prefix-caching",
        "--dtype",
        "--block-size",
        "--speculative-config",
    ):
        assert flag in run.stdout


def test_bad_flag_value_is_a_clear_error_naming_the_flag():
    run = _tachyon("generate", "--gpu-memory-utilization", "1.5")
    assert run.returncode == 2
    assert "--gpu-memory-utilization" in run.stderr and "Traceback" not in run.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    run = _tachyon("generate", str(tmp_path / "nope"))
    assert run.returncode == 2
    assert "nope" in run.stderr and "Traceback" not in run.stderr


def test_convert_writes_a_folder_the_engine_loads(gguf_path, tmp_path, model_dir):
    from tachyon.models.loader import load_model_source

    out = tmp_path / "converted"
    run = _tachyon("convert", gguf_path, str(out))
    assert run.returncode == 0, run.stderr
    converted, reference = load_model_source(str(out)), load_model_source(model_dir)

    def fields(source) -> dict:
        return {k: v for k, v in source.hf_config.to_dict().items() if "name_or_path" not in k}

    assert fields(converted) == fields(reference)
    again = _tachyon("convert", gguf_path, str(out))
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_compress_writes_a_checkpoint_and_refuses_bad_input_before_work(model_dir, tmp_path):
    from tachyon.quantization.compressed_tensors import decompress

    out = tmp_path / "w8a16"
    run = _tachyon("compress", model_dir, "--scheme", "W8A16", "--group-size", "64", "--output", str(out))
    assert run.returncode == 0, run.stderr
    assert sum(1 for name, _ in decompress(str(out)) if name.endswith("q_proj.weight")) == 30
    bad = _tachyon("compress", model_dir, "--scheme", "W3A9", "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "W4A16" in bad.stderr and not (tmp_path / "bad").exists()
