"""Load profiles for `tachyon bench`. A profile is a series of `LoadLevel`s, one benchmark each;
`create_profile(name, options)` picks it from `PROFILES`. The sweep is adaptive: it runs
synchronous and throughput first, then constant rates strictly between the two measured rates.

    synchronous  one request at a time            concurrent  N streams, each sends when its last ends
    throughput   everything at once, up to a cap  constant    fixed gaps of 1/rate
    poisson      exponential gaps, mean 1/rate    sweep       synchronous, throughput, then K constant rates
"""

from __future__ import annotations

import itertools
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SLOT_KINDS = ("synchronous", "concurrent", "throughput")
RATE_KINDS = ("constant", "poisson")
DEFAULT_THROUGHPUT_CONCURRENCY = 256


@dataclass(frozen=True)
class LoadLevel:
    """One benchmark's schedule: keep `streams` requests in flight, or send at `rate` per second
    (capped at `max_concurrency` in flight when given)."""

    kind: str
    streams: int | None = None
    rate: float | None = None
    max_concurrency: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind in SLOT_KINDS and not (self.streams and self.streams >= 1):
            raise ValueError(f"a {self.kind} benchmark needs at least one stream")
        if self.kind in RATE_KINDS and not (self.rate and self.rate > 0):
            raise ValueError(f"a {self.kind} benchmark needs a positive --rate")
        if self.kind not in SLOT_KINDS + RATE_KINDS:
            raise ValueError(f"unknown load kind {self.kind!r}")

    @property
    def label(self) -> str:
        if self.kind == "concurrent":
            return f"concurrent@{self.streams}"
        if self.kind in RATE_KINDS:
            return f"{self.kind}@{self.rate:.3g}/s"
        return self.kind

    def arrival_offsets(self) -> Iterator[float]:
        """Seconds after the start at which rate kinds send; the first request goes at 0."""
        if self.kind == "constant":
            return (i / self.rate for i in itertools.count())
        if self.kind == "poisson":
            return _poisson_offsets(random.Random(self.seed), self.rate)
        raise ValueError(f"a {self.kind} benchmark keeps slots full; it has no arrival schedule")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "streams": self.streams, "rate": self.rate, "max_concurrency": self.max_concurrency}

    @classmethod
    def from_dict(cls, data: dict) -> LoadLevel:
        return cls(data["kind"], data.get("streams"), data.get("rate"), data.get("max_concurrency"))


def _poisson_offsets(rng: random.Random, rate: float) -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += rng.expovariate(rate)


@dataclass(frozen=True)
class ProfileOptions:
    rates: tuple[float, ...] = ()
    concurrencies: tuple[int, ...] = ()
    max_concurrency: int | None = None
    sweep_steps: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if any(r <= 0 for r in self.rates):
            raise ValueError(f"--rate values must be positive, got {list(self.rates)}")
        if any(c < 1 for c in self.concurrencies):
            raise ValueError(f"--concurrency values must be at least 1, got {list(self.concurrencies)}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.sweep_steps < 1:
            raise ValueError(f"--sweep-steps must be at least 1, got {self.sweep_steps}")


class Profile(ABC):
    name: str

    @abstractmethod
    def next_level(self, throughputs: Sequence[float]) -> LoadLevel | None:
        """The next benchmark, given the request throughput (completed/s) of each one run so far;
        None when the profile is done."""


class FixedProfile(Profile):
    def __init__(self, name: str, levels: Sequence[LoadLevel]) -> None:
        self.name, self.levels = name, tuple(levels)

    def next_level(self, throughputs: Sequence[float]) -> LoadLevel | None:
        return self.levels[len(throughputs)] if len(throughputs) < len(self.levels) else None


class SweepProfile(Profile):
    name = "sweep"

    def __init__(self, options: ProfileOptions) -> None:
        self.options = options
        self.rates: list[float] = []

    def next_level(self, throughputs: Sequence[float]) -> LoadLevel | None:
        o = self.options
        if len(throughputs) == 0:
            return LoadLevel("synchronous", streams=1)
        if len(throughputs) == 1:
            return LoadLevel("throughput", streams=o.max_concurrency or DEFAULT_THROUGHPUT_CONCURRENCY)
        if len(throughputs) == 2:
            self.rates = sweep_rates(throughputs[0], throughputs[1], o.sweep_steps)
        i = len(throughputs) - 2
        if i >= len(self.rates):
            return None
        return LoadLevel("constant", rate=self.rates[i], max_concurrency=o.max_concurrency, seed=o.seed + i)


def sweep_rates(sync_rate: float, throughput_rate: float, steps: int) -> list[float]:
    """`steps` rates evenly spaced strictly between the synchronous and the throughput rate. A server
    that does not batch (throughput not above synchronous) gets the range synchronous..2x synchronous."""
    if sync_rate <= 0:
        raise ValueError("the sweep's synchronous benchmark completed no request, so there is no rate to start from")
    high = throughput_rate
    if high <= sync_rate:
        logger.warning(
            "throughput (%.3g req/s) is not above synchronous (%.3g req/s); sweeping up to twice synchronous",
            throughput_rate,
            sync_rate,
        )
        high = 2 * sync_rate
    return [sync_rate + (high - sync_rate) * i / (steps + 1) for i in range(1, steps + 1)]


def _synchronous(o: ProfileOptions) -> Profile:
    return FixedProfile("synchronous", [LoadLevel("synchronous", streams=1)])


def _concurrent(o: ProfileOptions) -> Profile:
    if not o.concurrencies:
        raise ValueError("--profile concurrent needs --concurrency N (one or more values)")
    return FixedProfile("concurrent", [LoadLevel("concurrent", streams=n) for n in o.concurrencies])


def _throughput(o: ProfileOptions) -> Profile:
    streams = o.max_concurrency or DEFAULT_THROUGHPUT_CONCURRENCY
    return FixedProfile("throughput", [LoadLevel("throughput", streams=streams)])


def _rate_profile(kind: str) -> Callable[[ProfileOptions], Profile]:
    def create(o: ProfileOptions) -> Profile:
        if not o.rates:
            raise ValueError(f"--profile {kind} needs --rate R (requests per second; one or more values)")
        levels = [
            LoadLevel(kind, rate=r, max_concurrency=o.max_concurrency, seed=o.seed + i) for i, r in enumerate(o.rates)
        ]
        return FixedProfile(kind, levels)

    return create


PROFILES: dict[str, Callable[[ProfileOptions], Profile]] = {
    "synchronous": _synchronous,
    "concurrent": _concurrent,
    "throughput": _throughput,
    "constant": _rate_profile("constant"),
    "poisson": _rate_profile("poisson"),
    "sweep": SweepProfile,
}


def create_profile(name: str, options: ProfileOptions) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name](options)
