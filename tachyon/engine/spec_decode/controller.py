"""How many draft tokens to verify per request this step, from a cost model instead of a fixed k.

Speculation pays while verifying k + 1 tokens per request costs little more than decoding one, which
holds while a step is bound by reading the weights. Once the batch makes the step compute-bound, or
drafts are mostly rejected, every extra token verified costs more than it returns. Each step the
controller picks the k in 0..num_speculative_tokens that maximizes expected tokens per second:

    tokens(k) = B * (1 - a^(k+1)) / (1 - a) + B_other        a: per-token acceptance (geometric model)
    seconds(k) = step(B_other + B * (k + 1)) + k * draft_round(B)

with step(T) and draft_round(B) measured at start-up on this machine (`StepCost`) and `a` estimated
from recent verifications. k = 0 switches speculation off; if only low acceptance keeps it off, a
probe with one draft token runs after 8 steps, then 16, 32, ... while probes keep failing. Changes are
logged (at most one INFO line per 10 s, the rest at DEBUG).
"""

from __future__ import annotations

import bisect
import logging
import time

logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0  # changes of k within this long after a logged one go to DEBUG
MIN_PROBE_INTERVAL, MAX_PROBE_INTERVAL = 8, 512  # steps between probes while speculation is off for low acceptance


class StepCost:
    """Seconds of a forward over T tokens, interpolated between measured points and extrapolated
    linearly past the last one (the compute-bound regime is linear in T)."""

    def __init__(self, points: list[tuple[int, float]]) -> None:
        self.points = sorted(points)

    def __call__(self, num_tokens: float) -> float:
        xs = [x for x, _ in self.points]
        if len(xs) == 1:
            return self.points[0][1] * max(1.0, num_tokens / xs[0])
        i = min(max(bisect.bisect_left(xs, num_tokens), 1), len(xs) - 1)
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return max(y0 + (y1 - y0) * (num_tokens - x0) / (x1 - x0), 0.0)

    def describe(self) -> str:
        return ", ".join(f"{n} tok {s * 1e3:.1f} ms" for n, s in self.points)


class AcceptanceEstimate:
    """Per-token acceptance `a` of the geometric model: accepted / (accepted + rejections), weighted
    toward recent steps, starting from a prior."""

    def __init__(self, prior: float = 0.6, weight: float = 8.0, decay: float = 0.9) -> None:
        self.prior, self.decay = prior, decay
        self.accepted, self.trials = prior * weight, weight

    @property
    def rate(self) -> float:
        return self.accepted / self.trials

    def update(self, num_accepted: int, num_rejections: int) -> None:
        if num_accepted + num_rejections:
            self.accepted = self.decay * self.accepted + num_accepted
            self.trials = self.decay * self.trials + num_accepted + num_rejections


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one request emits per step with k drafts: 1 + a + a^2 + ... + a^k."""
    return sum(acceptance**i for i in range(k + 1))


class SpeculationController:
    def __init__(
        self,
        max_draft_tokens: int,
        step_cost: StepCost | None,  # None only when not adaptive
        draft_round_cost: StepCost | None,
        disable_by_batch_size: int | None = None,
        adaptive: bool = True,
    ) -> None:
        self.max_draft_tokens, self.adaptive = max_draft_tokens, adaptive
        self.step_cost, self.draft_round_cost = step_cost, draft_round_cost
        self.disable_by_batch_size = disable_by_batch_size
        self.acceptance = AcceptanceEstimate()
        self.current: int | None = None
        self._last_logged = -LOG_INTERVAL_S
        self._steps_off, self._probe_interval = 0, MIN_PROBE_INTERVAL

    def choose(self, num_speculating: int, num_other: int) -> int:
        """Draft tokens per request for `num_speculating` requests that may speculate, next to
        `num_other` running requests that may not (one token each)."""
        if num_speculating == 0:
            return 0
        if self.disable_by_batch_size is not None and num_speculating + num_other >= self.disable_by_batch_size:
            return self._set(0, num_speculating, num_other, "disable_by_batch_size")
        if not self.adaptive:
            return self._set(self.max_draft_tokens, num_speculating, num_other, "fixed")
        k = self._best_k(self.acceptance.rate, num_speculating, num_other)
        if k > 0 or self._best_k(self.acceptance.prior, num_speculating, num_other) == 0:
            self._steps_off, self._probe_interval = 0, MIN_PROBE_INTERVAL
            return self._set(k, num_speculating, num_other, "cost model")
        # off only because drafts were rejected: probe with one draft token now and then, backing off
        # exponentially while probes keep failing, so acceptance that recovers is noticed
        self._steps_off += 1
        if self._steps_off < self._probe_interval:
            return self._set(0, num_speculating, num_other, "cost model")
        self._steps_off, self._probe_interval = 0, min(2 * self._probe_interval, MAX_PROBE_INTERVAL)
        return 1

    def _best_k(self, acceptance: float, b: int, num_other: int) -> int:
        best_k, best_rate = 0, (b + num_other) / self.step_cost(b + num_other)
        for k in range(1, self.max_draft_tokens + 1):
            seconds = self.step_cost(num_other + b * (k + 1))
            if self.draft_round_cost is not None:
                seconds += k * self.draft_round_cost(b)
            rate = (b * expected_tokens(acceptance, k) + num_other) / seconds
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k

    def _set(self, k: int, num_speculating: int, num_other: int, why: str) -> int:
        if k != self.current:
            now = time.monotonic()
            quiet = now - self._last_logged < LOG_INTERVAL_S  # probing after a switch-off flips k often
            self._last_logged = self._last_logged if quiet else now
            logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "speculative decoding: %d draft tokens per request (was %s; %s: %d requests may speculate, "
                "%d others, acceptance %.2f)",
                k,
                self.current,
                why,
                num_speculating,
                num_other,
                self.acceptance.rate,
            )
            self.current = k
        return k
