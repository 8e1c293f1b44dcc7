"""Runs a whole `tachyon bench`: checks the server, prepares the request data, then runs the
profile's load levels one after another (the sweep choosing its rates from the first two), applying
warm-up/cool-down and computing each level's statistics. `BenchConfig` holds the validated flags."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tachyon.bench.client import ClientConfig, StreamingClient
from tachyon.bench.data import (
    LocalTokenCounter,
    RequestSpec,
    ServerTokenCounter,
    TokenCounter,
    TokenDist,
    load_file,
    synthetic_requests,
)
from tachyon.bench.metrics import compute_stats, mark_measured
from tachyon.bench.profiles import ProfileOptions, create_profile
from tachyon.bench.report import Progress
from tachyon.bench.results import BenchmarkResult, BenchRun
from tachyon.bench.scheduler import LevelScheduler, Limits

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUESTS = 100  # when neither --max-seconds nor --max-requests is given (synthetic data)
DEFAULT_NUM_PROMPTS = 1000  # synthetic prompts prepared when the number of requests is open-ended
MAX_DEFAULT_NUM_PROMPTS = 10000


@dataclass(frozen=True)
class DataConfig:
    prompt: TokenDist
    output: TokenDist
    path: str | None = None  # a .jsonl/.csv/.txt file instead of synthetic prompts
    tokenizer: str | None = None  # local tokenizer; None: the server's /tokenize
    prefix_tokens: int = 0
    num_prompts: int | None = None

    def describe(self) -> str:
        if self.path:
            return f"file {self.path}"
        p, o = self.prompt, self.output
        spread = lambda d: f" (stdev {d.stdev:g}, range {d.low or 1}..{d.high or 'inf'})" if d.stdev else ""
        prefix = f"{self.prefix_tokens} shared prefix + " if self.prefix_tokens else ""
        return f"synthetic, {prefix}{p.mean} prompt tokens{spread(p)}, {o.mean} output tokens{spread(o)}"


@dataclass(frozen=True)
class BenchConfig:
    client: ClientConfig
    data: DataConfig
    profile: str = "synchronous"
    profile_options: ProfileOptions = field(default_factory=ProfileOptions)
    limits: Limits = field(default_factory=Limits)
    warmup: float = 0.0  # fraction of requests (< 1) or seconds (>= 1)
    cooldown: float = 0.0
    slos: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for flag, value in (("--warmup", self.warmup), ("--cooldown", self.cooldown)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0 (a fraction below 1, or seconds), got {value}")
        if 0 < self.warmup < 1 and 0 < self.cooldown < 1 and self.warmup + self.cooldown >= 1:
            raise ValueError("--warmup and --cooldown fractions leave no request to measure")
        create_profile(self.profile, self.profile_options)  # a missing --rate fails before the server is asked


def default_limits(config: BenchConfig, num_rows: int | None) -> Limits:
    """Neither limit given: a file runs each of its rows once, synthetic data 100 requests."""
    lim = config.limits
    if lim.max_seconds is not None or lim.max_requests is not None:
        return lim
    return Limits(None, num_rows or DEFAULT_MAX_REQUESTS, lim.max_error_rate)


def num_levels(config: BenchConfig) -> int:
    o = config.profile_options
    return {
        "sweep": 2 + o.sweep_steps,
        "concurrent": len(o.concurrencies),
        "constant": len(o.rates),
        "poisson": len(o.rates),
    }.get(config.profile, 1)


async def prepare_requests(config: BenchConfig, counter: TokenCounter) -> list[RequestSpec]:
    d = config.data
    if d.path:
        specs = load_file(d.path, d.output, config.seed)
        return specs[: d.num_prompts] if d.num_prompts else specs
    num = d.num_prompts or _default_num_prompts(config)
    started = time.perf_counter()
    specs = await synthetic_requests(counter, num, d.prompt, d.output, d.prefix_tokens, config.seed)
    logger.info("prepared %d synthetic prompts in %.1f s", num, time.perf_counter() - started)
    return specs


def _default_num_prompts(config: BenchConfig) -> int:
    """One distinct prompt per request when the request count is known, else DEFAULT_NUM_PROMPTS."""
    lim = config.limits
    if lim.max_requests is None and lim.max_seconds is not None:
        return DEFAULT_NUM_PROMPTS
    return min((lim.max_requests or DEFAULT_MAX_REQUESTS) * num_levels(config), MAX_DEFAULT_NUM_PROMPTS)


async def run_benchmark(config: BenchConfig, progress: Progress | None = None, meta: dict | None = None) -> BenchRun:
    progress = progress or Progress(enabled=False)
    client = StreamingClient(config.client)
    try:
        model = await client.probe()
        counter = _token_counter(config, client, model)
        client.output_counter = counter
        specs = await prepare_requests(config, counter)
        limits = default_limits(config, len(specs) if config.data.path else None)
        run = BenchRun(meta=_meta(config, model, limits, meta))
        await _run_levels(config, client, itertools.cycle(specs), limits, progress, run)
        return run
    finally:
        progress.close()
        await client.aclose()


async def _run_levels(
    config: BenchConfig,
    client: StreamingClient,
    source: Iterator[RequestSpec],
    limits: Limits,
    progress: Progress,
    run: BenchRun,
) -> None:
    profile = create_profile(config.profile, config.profile_options)
    while (level := profile.next_level([b.stats.request_throughput for b in run.benchmarks])) is not None:
        progress.start(level.label, limits.max_requests)
        index = len(run.benchmarks)
        scheduler = LevelScheduler(level, source, client, limits, progress.finished, id_prefix=f"b{index}")
        done = await scheduler.run()
        progress.close()
        mark_measured(done.records, config.warmup, config.cooldown)
        stats = compute_stats(done.records, level.rate, config.slos)
        if level.rate and stats.lag.mean is not None and stats.lag.mean > 100.0 / level.rate:
            # mean lag over a tenth of the mean gap between sends: the schedule was not kept
            logger.warning(
                "%s: requests left %.1f ms late on average (client or --max-concurrency too slow)",
                level.label,
                stats.lag.mean,
            )
        run.benchmarks.append(BenchmarkResult(level, done.stop_reason, done.start_time, stats, done.records))


def _token_counter(config: BenchConfig, client: StreamingClient, model: str) -> TokenCounter:
    if config.data.tokenizer:
        try:
            return LocalTokenCounter(config.data.tokenizer)
        except (OSError, ValueError) as e:
            raise ValueError(f"--tokenizer {config.data.tokenizer}: cannot load it ({e})") from None
    return ServerTokenCounter(client.http, config.client.base_url, model)


def _meta(config: BenchConfig, model: str, limits: Limits, extra: dict | None) -> dict:
    c = config.client
    return {
        "url": c.base_url + ("/v1/chat/completions" if c.endpoint == "chat" else "/v1/completions"),
        "endpoint": c.endpoint,
        "model": model,
        "profile": config.profile,
        "rates": list(config.profile_options.rates),
        "concurrencies": list(config.profile_options.concurrencies),
        "max_concurrency": config.profile_options.max_concurrency,
        "max_seconds": limits.max_seconds,
        "max_requests": limits.max_requests,
        "max_error_rate": limits.max_error_rate,
        "data": config.data.describe(),
        "tokenizer": config.data.tokenizer or "server /tokenize",
        "ignore_eos": c.ignore_eos,
        "warmup": config.warmup,
        "cooldown": config.cooldown,
        "slos": config.slos,
        "seed": config.seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
