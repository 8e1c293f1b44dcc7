"""`tachyon validate`: compress a model with each scheme, measure accuracy (tachyon.evals), offline
throughput and serving latency (tachyon serve + tachyon bench) of every checkpoint, and write one report
folder with a recommendation per use case. Flow: cli -> config -> pipeline (steps) -> report. See
docs/evals.md. `validate_model` is imported lazily, so `python -m tachyon.validate.throughput` runs clean.
"""

from __future__ import annotations

from tachyon.validate.config import ValidateConfig, Workload

__all__ = ["ValidateConfig", "Workload", "validate_model"]


def __getattr__(name: str):
    if name == "validate_model":
        from tachyon.validate.pipeline import validate_model

        return validate_model
    raise AttributeError(f"module 'tachyon.validate' has no attribute {name!r}")
