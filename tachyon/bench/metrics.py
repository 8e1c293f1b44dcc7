"""Per-request records and per-benchmark statistics for `tachyon bench`, with vLLM's
`benchmark_serving` names and definitions (TTFT, TPOT, ITL, E2EL, request/output/total throughput,
goodput). The scheduler fills `RequestRecord`s; `mark_measured` applies warm-up/cool-down;
`compute_stats` turns the measured ones into a `BenchmarkStats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

OK, ERROR, INCOMPLETE, PENDING = "ok", "error", "incomplete", "pending"
PERCENTILES = (90, 95, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")


@dataclass
class RequestRecord:
    """One request. Times are seconds since its benchmark started (the scheduler's clock)."""

    request_id: str
    scheduled_time: float  # when the profile wanted it sent
    requested_output_tokens: int | None = None  # max_tokens sent (None: the server's default)
    send_time: float | None = None
    first_token_time: float | None = None  # first chunk that carries a token
    end_time: float | None = None  # stream finished, failed, or cancelled
    itl: list[float] = field(default_factory=list)  # every gap between token-bearing chunks, seconds
    status: str = PENDING  # ok | error | incomplete
    error: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    output_tokens_source: str | None = None  # usage | tokenizer | chunks
    response_id: str | None = None
    measured: bool = True  # False: sent in the warm-up or finished in the cool-down window

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None or self.send_time is None:
            return None
        return self.first_token_time - self.send_time

    @property
    def latency(self) -> float | None:
        """E2EL: send to the end of the response stream."""
        if self.end_time is None or self.send_time is None:
            return None
        return self.end_time - self.send_time

    @property
    def tpot(self) -> float | None:
        """(latency - TTFT) / (output_tokens - 1); undefined for fewer than two output tokens."""
        if self.status != OK or not self.output_tokens or self.output_tokens < 2:
            return None
        return time_per_output_token(self.latency, self.ttft, self.output_tokens)

    @property
    def scheduling_lag(self) -> float | None:
        return None if self.send_time is None else self.send_time - self.scheduled_time

    def fail(self, now: float, message: str) -> None:
        self.status, self.error, self.end_time = ERROR, message, now

    def to_dict(self) -> dict:
        derived = {"ttft": self.ttft, "latency": self.latency, "tpot": self.tpot}
        return {**asdict(self), **derived}

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def time_per_output_token(latency: float, ttft: float, output_tokens: int) -> float:
    """TPOT: the decode time spread over the tokens after the first."""
    return (latency - ttft) / (output_tokens - 1)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy (and vLLM) do."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class Distribution:
    """Summary of one latency metric in milliseconds; every field is None when there were no samples."""

    count: int = 0
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of_seconds(cls, values: list[float]) -> Distribution:
        if not values:
            return cls()
        ms = np.asarray(values, dtype=np.float64) * 1000.0
        quantiles = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
        return cls(
            count=len(values),
            mean=float(ms.mean()),
            std=float(ms.std()),
            median=float(np.median(ms)),
            max=float(ms.max()),
            **quantiles,
        )


@dataclass(frozen=True)
class BenchmarkStats:
    """Aggregate of one benchmark (load level) over its measured requests."""

    num_requests: int  # sent, warm-up and cool-down included
    num_excluded: int  # in the warm-up or cool-down window
    completed: int
    failed: int
    incomplete: int  # cancelled when a limit stopped the benchmark
    duration: float  # first measured send to last measured end, seconds
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None  # None without SLOs
    output_throughput: float
    total_token_throughput: float
    mean_concurrency: float
    target_rate: float | None
    achieved_rate: float | None  # sends per second over the benchmark
    lag: Distribution  # send time - scheduled time
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution

    def flat(self) -> dict[str, float | int | None]:
        """One level of keys with vLLM's names: mean_ttft_ms, p99_itl_ms, ... (JSON, CSV, compare)."""
        out: dict[str, float | int | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Distribution):
                for stat in ("mean", "std", "median", *(f"p{q}" for q in PERCENTILES), "max"):
                    out[f"{stat}_{f.name}_ms"] = getattr(value, stat)
            else:
                out[f.name] = value
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkStats:
        values = {}
        for f in fields(cls):
            value = data[f.name]
            values[f.name] = Distribution(**value) if isinstance(value, dict) else value
        return cls(**values)


def mark_measured(records: list[RequestRecord], warmup: float, cooldown: float) -> None:
    """Warm-up: the first requests sent (a fraction of them, or those sent in the first seconds).
    Cool-down: the last requests to finish (a fraction, or those ending in the last seconds).
    Both stay in the records with measured=False and are left out of the statistics."""
    sent = [r for r in records if r.send_time is not None]
    for r in records:
        r.measured = r.send_time is not None
    if not sent:
        return
    by_send = sorted(sent, key=lambda r: r.send_time)
    by_end = sorted(sent, key=lambda r: r.end_time if r.end_time is not None else r.send_time)
    start, end = by_send[0].send_time, by_end[-1].end_time or by_end[-1].send_time
    if 0 < warmup < 1:
        excluded = by_send[: int(warmup * len(sent))]
    else:
        excluded = [r for r in sent if r.send_time < start + warmup] if warmup else []
    if 0 < cooldown < 1:
        excluded += by_end[len(sent) - int(cooldown * len(sent)) :]
    elif cooldown:
        excluded += [r for r in sent if (r.end_time if r.end_time is not None else r.send_time) > end - cooldown]
    for r in excluded:
        r.measured = False


def parse_slos(items: list[str] | None) -> dict[str, float]:
    """['ttft_ms=200', 'tpot:50'] -> {'ttft_ms': 200.0, 'tpot_ms': 50.0} (vLLM's --goodput spelling works too)."""
    slos = {}
    for item in items or []:
        name, sep, value = item.replace(":", "=").partition("=")
        name = name if name.endswith("_ms") else f"{name}_ms"
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"--slo {item!r}: expected NAME=MILLISECONDS with NAME one of {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--slo {item!r}: {value!r} is not a number of milliseconds") from None
        if slos[name] <= 0:
            raise ValueError(f"--slo {item!r}: the limit must be positive")
    return slos


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    """A completed request is good when each SLO metric is at or under its limit; TPOT is not
    defined for one-token outputs, so a TPOT SLO does not count against them (vLLM uses 0 there)."""
    if record.status != OK:
        return False
    values = {"ttft_ms": record.ttft, "tpot_ms": record.tpot, "e2el_ms": record.latency}
    return all(values[name] is None or values[name] * 1000.0 <= limit for name, limit in slos.items())


def compute_stats(
    records: list[RequestRecord], target_rate: float | None = None, slos: dict[str, float] | None = None
) -> BenchmarkStats:
    measured = [r for r in records if r.measured and r.send_time is not None]
    done = [r for r in measured if r.status == OK]
    duration = _window(measured)
    total_input = sum(r.prompt_tokens or 0 for r in done)
    total_output = sum(r.output_tokens or 0 for r in done)
    busy = sum(r.latency or 0.0 for r in measured)  # Little's law: mean in flight = sum of latencies / time

    def per_second(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    num_good = sum(meets_slos(r, slos) for r in done) if slos else None
    return BenchmarkStats(
        num_requests=sum(r.send_time is not None for r in records),
        num_excluded=sum(r.send_time is not None and not r.measured for r in records),
        completed=len(done),
        failed=sum(r.status == ERROR for r in measured),
        incomplete=sum(r.status == INCOMPLETE for r in measured),
        duration=duration,
        total_input=total_input,
        total_output=total_output,
        request_throughput=per_second(len(done)),
        request_goodput=None if num_good is None else per_second(num_good),
        output_throughput=per_second(total_output),
        total_token_throughput=per_second(total_input + total_output),
        mean_concurrency=per_second(busy),
        target_rate=target_rate,
        achieved_rate=achieved_rate(records),
        lag=Distribution.of_seconds([r.scheduling_lag for r in records if r.scheduling_lag is not None]),
        ttft=Distribution.of_seconds([r.ttft for r in done if r.ttft is not None]),
        tpot=Distribution.of_seconds([r.tpot for r in done if r.tpot is not None]),
        itl=Distribution.of_seconds([gap for r in done for gap in r.itl]),
        e2el=Distribution.of_seconds([r.latency for r in done if r.latency is not None]),
    )


def _window(measured: list[RequestRecord]) -> float:
    if not measured:
        return 0.0
    start = min(r.send_time for r in measured)
    end = max(r.end_time if r.end_time is not None else r.send_time for r in measured)
    return end - start


def achieved_rate(records: list[RequestRecord]) -> float | None:
    """Sends per second: (n - 1) gaps over the span from the first send to the last."""
    sends = sorted(r.send_time for r in records if r.send_time is not None)
    if len(sends) < 2 or sends[-1] <= sends[0]:
        return None
    return (len(sends) - 1) / (sends[-1] - sends[0])
