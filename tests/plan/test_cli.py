"""`tachyon plan` end to end through `tachyon.cli.main`: the table, JSON and plot, every flag documented,
and bad input as a one-line error with exit code 2."""

from __future__ import annotations

import json

import pytest

from tachyon.cli import build_parser, main
from tests.plan.helpers import config_path

LLAMA = config_path("Llama-3.1-8B")


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["plan", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_shows_memory_kv_fit_and_gpu_count(capsys, tmp_path):
    rc, out, _ = _run(
        capsys, "--model", LLAMA, "--gpu", "h100 sxm", "--scheme", "W4A16", "--max-model-len", "32768",
        "--rate", "20", "--slo-itl-ms", "30", "--slo-ttft-ms", "500", "--plot", str(tmp_path / "p.svg"),
    )  # fmt: skip
    assert rc == 0
    assert "5,700,595,200  = 5.31 GiB" in out
    assert "KV cache: 131,072 bytes per token" in out and "fits: yes" in out
    assert "decode turns compute-bound: from batch" in out
    assert "target 20 req/s: 1 replica(s) = 1 GPU(s)" in out
    svg = (tmp_path / "p.svg").read_text()
    assert svg.startswith("<svg") and "Output throughput" in svg and "ITL SLO 30 ms" in svg


def test_json_output_and_file(capsys, tmp_path):
    rc, out, _ = _run(
        capsys, "--model", config_path("Qwen2.5-7B"), "--gpu", "L40S", "--scheme", "FP8_DYNAMIC",
        "--kv-cache-dtype", "fp8", "--max-model-len", "8192", "--json", "--output", str(tmp_path / "plan.json"),
        "--plot", str(tmp_path / "plan.html"),
    )  # fmt: skip
    assert rc == 0
    data = json.loads(out)
    assert data == json.loads((tmp_path / "plan.json").read_text())
    assert data["kv_cache"]["bytes_per_token"] == 2 * 28 * 4 * (128 + 4)
    assert data["fits"] is True and data["scheme"] == "FP8_DYNAMIC"
    assert data["kv_cache"]["num_tokens"] == data["kv_cache"]["num_blocks"] * 16
    assert "<svg" in (tmp_path / "plan.html").read_text()


def test_default_model_when_none_is_named(capsys):
    rc, out, _ = _run(capsys, "--gpu", "L4", "--scheme", "W8A8", "--json")
    data = json.loads(out)
    assert rc == 0 and data["model"]["name"] == "SmolLM2-135M-Instruct"
    assert sum(g["num_params"] for g in data["weights"]["groups"]) == 134_515_008
    assert data["kv_cache"]["bytes_per_token"] == 2 * 30 * 3 * 64 * 2  # bf16 on a GPU


def test_not_fitting_names_the_smallest_setup(capsys):
    rc, out, _ = _run(capsys, "--model", LLAMA, "--gpu", "L4")
    assert rc == 0 and "fits: NO" in out and "smallest setup that fits: W8A16 on 1 x L4" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "H300"], "error: unknown GPU 'H300'; known: H100-SXM"),
        (["--scheme", "W3A3"], "error: --scheme: unknown quantization scheme 'W3A3'"),
        (["--gpu", "custom", "--memory-gib", "24"], "error: --gpu custom needs --bandwidth-gbs, --tflops"),
        (["--kv-cache-dtype", "fp4"], "error: --kv-cache-dtype must be one of auto, fp8, int8"),
        (["--sparsity", "1:2"], "error: --sparsity '1:2' is not supported"),
        (["--scheme", "W4A16", "--group-size", "96"], "error: group_size 96 does not divide in_features 4096"),
        (["--rate", "5", "--concurrency", "8"], "error: give --rate or --concurrency, not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
    rc, out, err = _run(capsys, "--model", LLAMA, *args)
    assert rc == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_config_without_needed_fields(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    rc, _, err = _run(capsys, "--model", str(tmp_path))
    assert rc == 2 and "config lacks intermediate_size, num_hidden_layers, num_attention_heads, vocab_size" in err
    rc, _, err = _run(capsys, "--model", str(tmp_path / "missing.json"))
    assert rc == 2 and "no such file or folder" in err


def test_cpu_without_a_profile_says_to_calibrate(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rc, _, err = _run(capsys, "--model", LLAMA, "--gpu", "cpu")
    assert rc == 2 and "run `tachyon plan calibrate` first" in err


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["plan"]
    calibrate = next(a for a in sub._actions if a.dest == "plan_command").choices["calibrate"]
    for p in (sub, calibrate):
        for action in p._actions:
            assert action.help, f"{action.option_strings} has no help"
