"""A calibrated machine profile: the machine's figures (a catalog GPU's, or measured ones for a CPU),
the efficiency factors fitted on real engine runs, and the runs themselves. `tachyon plan calibrate`
writes one (`save_profile`); `tachyon plan --profile` / `--gpu cpu` read it (`load_profile`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from tachyon.plan.catalog import GPUSpec
from tachyon.plan.roofline import Efficiency

__all__ = ["Measurement", "MachineProfile", "default_profile_path", "load_profile", "save_profile"]


@dataclass(frozen=True)
class Measurement:
    """One calibration run: decode at `batch` sequences over a mean context of `context_len` tokens."""

    batch: int
    context_len: float
    measured_tok_s: float
    predicted_tok_s: float | None = None  # by the fitted profile

    @property
    def error_pct(self) -> float | None:
        if self.predicted_tok_s is None:
            return None
        return 100 * (self.predicted_tok_s - self.measured_tok_s) / self.measured_tok_s


@dataclass(frozen=True)
class MachineProfile:
    machine: GPUSpec
    efficiency: Efficiency
    device: str  # "cpu" or "cuda"
    dtype: str  # model dtype of the calibration runs
    model: str
    measurements: list[Measurement] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # host, threads, date, micro-benchmark figures


def default_profile_path(name: str = "cpu") -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "tachyon", "plan", f"{name}.json")


def save_profile(profile: MachineProfile, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(profile), f, indent=2)
        f.write("\n")


def load_profile(path: str) -> MachineProfile:
    """A saved profile; a clear error when it is missing or malformed."""
    if not os.path.isfile(path):
        raise ValueError(f"no calibration profile at {path}: run `tachyon plan calibrate` first (or give --profile)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return MachineProfile(
            machine=GPUSpec(**raw["machine"]),
            efficiency=Efficiency(**raw["efficiency"]),
            device=raw["device"],
            dtype=raw["dtype"],
            model=raw["model"],
            measurements=[Measurement(**m) for m in raw.get("measurements", [])],
            meta=raw.get("meta", {}),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a tachyon plan profile ({e})") from e
