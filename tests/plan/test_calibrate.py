"""Calibration: the fit recovers known efficiency factors from synthetic measurements, a profile
round-trips through JSON, and `tachyon plan calibrate` runs the real engine and feeds `tachyon plan`."""

from __future__ import annotations

import json

import pytest

from tachyon.cli import main
from tachyon.plan.calibrate import fit_efficiency, profile_roofline
from tachyon.plan.catalog import GPUSpec
from tachyon.plan.model_spec import load_model_spec
from tachyon.plan.profile import MachineProfile, Measurement, load_profile, save_profile
from tachyon.plan.roofline import Efficiency
from tests.plan.helpers import config_path

MACHINE = GPUSpec("test cpu", memory_gib=16, bandwidth_gbs=20, bf16_tflops=0.1)


def test_fit_recovers_known_factors():
    spec = load_model_spec(config_path("Mistral-7B-v0.3"))
    truth = Efficiency(0.4, 0.6, 0.02, calibrated=True)
    true_roofline = profile_roofline(spec, MACHINE, truth, "float32", on_cpu=True)
    runs = [Measurement(b, 50, b / true_roofline.decode_step_s(b, 50)) for b in (1, 2, 4, 8, 16, 32)]
    unit = profile_roofline(spec, MACHINE, Efficiency(1, 1, 0), "float32", on_cpu=True)
    fitted = fit_efficiency(unit, runs)
    predicted = profile_roofline(spec, MACHINE, fitted, "float32", on_cpu=True)
    for m in runs:
        assert m.batch / predicted.decode_step_s(m.batch, 50) == pytest.approx(m.measured_tok_s, rel=0.03)
    assert fitted.bandwidth == pytest.approx(0.4, rel=0.05) and fitted.compute == pytest.approx(0.6, rel=0.05)


def test_profile_round_trip(tmp_path):
    profile = MachineProfile(
        MACHINE, Efficiency(0.5, 0.4, 0.01, True), "cpu", "float32", "m", [Measurement(1, 9, 3, 3.3)]
    )
    save_profile(profile, str(tmp_path / "p.json"))
    assert load_profile(str(tmp_path / "p.json")) == profile
    assert profile.measurements[0].error_pct == pytest.approx(10.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tachyon plan profile"):
        load_profile(str(tmp_path / "bad.json"))


def test_calibrate_runs_the_engine_and_plan_uses_the_profile(model_dir, tmp_path, capsys):
    path = str(tmp_path / "cpu.json")
    args = [
        "plan",
        "calibrate",
        "--model",
        model_dir,
        "--batch-sizes",
        "1,2",
        "--threads",
        "1",
        "--prompt-len",
        "8",
        "--output-len",
        "5",
        "--output",
        path,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured tok/s" in out and "error" in out and path in out
    profile = load_profile(path)
    assert profile.device == "cpu" and profile.dtype == "float32" and profile.efficiency.calibrated
    assert [m.batch for m in profile.measurements] == [1, 2] and all(m.measured_tok_s > 0 for m in profile.measurements)
    assert main(["plan", "--model", model_dir, "--profile", path, "--kv-cache-memory", str(64 << 20), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["efficiency"]["calibrated"] and data["settings"]["dtype"] == "float32"
    assert data["kv_cache"]["num_blocks"] == (64 << 20) // (16 * 46080)  # what the engine logs for 64 MiB
