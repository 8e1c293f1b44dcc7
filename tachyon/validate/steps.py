"""One step of a validation run (compress, accuracy, throughput, serving) and how it is run: timed, logged,
and a failure caught and recorded instead of raised, so one broken scheme or step never stops the rest.
The report shows each step's status, its error and the command that reproduces its figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
T = TypeVar("T")


@dataclass
class StepResult:
    name: str  # compress | accuracy | throughput | serving
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    error: str | None = None  # failed: the exception; skipped: why
    command: str = ""  # the shell command that reproduces this step's figures


class StepRunner:
    """Numbers the steps for the progress log ([3/9] ...) and turns exceptions into failed steps."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps, self.num_done = num_steps, 0

    def run(self, name: str, label: str, command: str, fn: Callable[[], T]) -> tuple[StepResult, T | None]:
        self.num_done += 1
        logger.info("[%d/%d] %s %s", self.num_done, self.num_steps, name, label)
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # any failure is the step's result, shown in the report
            logger.exception("%s %s failed", name, label)
            return StepResult(name, FAILED, time.perf_counter() - start, f"{type(e).__name__}: {e}", command), None
        seconds = time.perf_counter() - start
        logger.info("[%d/%d] %s %s done in %.1f s", self.num_done, self.num_steps, name, label, seconds)
        return StepResult(name, OK, seconds, None, command), value

    def skip(self, name: str, label: str, reason: str, command: str = "") -> StepResult:
        self.num_done += 1
        logger.warning("[%d/%d] %s %s skipped: %s", self.num_done, self.num_steps, name, label, reason)
        return StepResult(name, SKIPPED, error=reason, command=command)
