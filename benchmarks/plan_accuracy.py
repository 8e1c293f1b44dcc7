"""How well a calibrated `tachyon plan` profile predicts the engine: a fresh engine run (new process, new
model load) measures decode tokens/s at batch 1, 8 and 32 of the profile's model, and the profile's
roofline predicts them. Batch 8 is not a calibration batch size (1, 4, 16, 32), so it is out of sample.
Prints predicted, measured and the error; exits 1 when batch 1 or 32 is off by more than 25%.

    tachyon plan calibrate                      # writes ~/.cache/tachyon/plan/cpu.json
    python benchmarks/plan_accuracy.py [--profile PATH] [--model PATH] [--batch-sizes 1,8,32]

Decode speed on a shared machine moves with the load of other processes: the load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys

from tachyon.plan.calibrate import measure_decode, profile_roofline
from tachyon.plan.model_spec import load_model_spec
from tachyon.plan.profile import default_profile_path, load_profile

MAX_ERROR_PCT = 25.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=default_profile_path("cpu"), help="profile from `tachyon plan calibrate`")
    parser.add_argument("--model", default=None, help="the model the profile was calibrated on (default model)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="decode batch sizes to check")
    args = parser.parse_args()

    import torch

    from tachyon import LLM

    profile = load_profile(args.profile)
    torch.set_num_threads(profile.meta.get("threads", torch.get_num_threads()))  # as calibrated
    spec = load_model_spec(args.model)
    prompt_len, output_len = profile.meta.get("prompt_len", 32), profile.meta.get("output_len", 24)
    roofline = profile_roofline(spec, profile.machine, profile.efficiency, profile.dtype, profile.device == "cpu")
    llm = LLM(args.model, device=profile.device, dtype=profile.dtype, kv_cache_memory=256 << 20)
    measure_decode(llm, 2, prompt_len, 4)  # warm-up, as calibration does
    print(f"profile {args.profile}: {profile.machine.name}, {profile.dtype}, calibrated {profile.meta.get('date')}")
    print(f"model {spec.name}; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'batch':>6}{'predicted tok/s':>17}{'measured tok/s':>16}{'error':>9}")
    failed = False
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measured = measure_decode(llm, batch, prompt_len, output_len)
        predicted = batch / roofline.decode_step_s(batch, measured.context_len)
        error = 100 * (predicted - measured.measured_tok_s) / measured.measured_tok_s
        checked = batch in (1, 32)
        failed |= checked and abs(error) > MAX_ERROR_PCT
        note = "" if checked else "  (not checked)"
        print(f"{batch:>6}{predicted:>17.2f}{measured.measured_tok_s:>16.2f}{error:>8.1f}%{note}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("FAIL: an error above 25%" if failed else f"OK: batch 1 and 32 within {MAX_ERROR_PCT:g}%")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
