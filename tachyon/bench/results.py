"""What a `tachyon bench` run produces: one `BenchmarkResult` per load level (its records and
statistics) inside a `BenchRun` with the run's settings. `save_json`/`load_json` round-trip it
exactly; `report`, `compare` and the CSV/HTML writers all start from a `BenchRun`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tachyon.bench.metrics import BenchmarkStats, RequestRecord, compute_stats
from tachyon.bench.profiles import LoadLevel

FORMAT_VERSION = 1


@dataclass
class BenchmarkResult:
    level: LoadLevel
    stop_reason: str
    start_time: float  # wall clock
    stats: BenchmarkStats
    records: list[RequestRecord]

    def recompute(self, slos: dict[str, float] | None) -> BenchmarkStats:
        """The statistics again from the stored records (the `measured` flags already applied)."""
        return compute_stats(self.records, self.level.rate, slos)

    def to_dict(self) -> dict:
        return {
            "level": self.level.to_dict(),
            "label": self.level.label,
            "stop_reason": self.stop_reason,
            "start_time": self.start_time,
            "stats": self.stats.to_dict(),
            "requests": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResult:
        return cls(
            level=LoadLevel.from_dict(data["level"]),
            stop_reason=data["stop_reason"],
            start_time=data["start_time"],
            stats=BenchmarkStats.from_dict(data["stats"]),
            records=[RequestRecord.from_dict(r) for r in data["requests"]],
        )


@dataclass
class BenchRun:
    meta: dict  # url, model, endpoint, profile, limits, data, warmup, cooldown, slos, ...
    benchmarks: list[BenchmarkResult] = field(default_factory=list)

    @property
    def slos(self) -> dict[str, float]:
        return self.meta.get("slos") or {}

    def to_dict(self) -> dict:
        benchmarks = [b.to_dict() for b in self.benchmarks]
        return {"format": "tachyon-bench", "version": FORMAT_VERSION, "meta": self.meta, "benchmarks": benchmarks}

    @classmethod
    def from_dict(cls, data: dict) -> BenchRun:
        if data.get("format") != "tachyon-bench":
            raise ValueError('not a `tachyon bench` result file (no "format": "tachyon-bench")')
        return cls(meta=data["meta"], benchmarks=[BenchmarkResult.from_dict(b) for b in data["benchmarks"]])


def save_json(run: BenchRun, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(run.to_dict(), f, indent=1)


def load_json(path: str) -> BenchRun:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        return BenchRun.from_dict(data)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed `tachyon bench` result ({type(e).__name__}: {e})") from None
