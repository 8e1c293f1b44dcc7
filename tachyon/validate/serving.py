"""The server half of a validation: start `tachyon serve` on a model as a subprocess on a free local port,
wait until it is healthy, run a short `tachyon bench` load against it (one benchmark per concurrency level)
and stop it. Only the command lines and the HTTP API are used, so the figures are what a user of
`tachyon serve` + `tachyon bench` sees; `bench_commands` spells those two commands out for the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tachyon.validate.config import Workload

STARTUP_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class LevelStats:
    """One benchmark (concurrency level) of the load run, in milliseconds and tokens/s."""

    concurrency: int
    completed: int
    failed: int
    output_throughput: float
    ttft_p50: float | None
    ttft_p99: float | None
    itl_p50: float | None
    itl_p99: float | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_argv(model: str | None, engine_flags: list[str], port: int) -> list[str]:
    return ["tachyon", "serve", *([model] if model else []), "--port", str(port), *engine_flags]


def bench_argv(url: str, workload: Workload, output: str) -> list[str]:
    return [
        *("tachyon", "bench", "--url", url, "--profile", "concurrent"),
        *("--concurrency", *map(str, workload.concurrency)),
        *("--max-requests", str(workload.bench_requests)),
        *("--prompt-tokens", str(workload.prompt_tokens), "--output-tokens", str(workload.output_tokens)),
        *("--ignore-eos", "--temperature", "0", "--output", output),
    ]


@contextlib.contextmanager
def running_server(model: str | None, engine_flags: list[str], log_path: str) -> Iterator[str]:
    """`tachyon serve` in a subprocess, its output in `log_path`; yields its URL once /health answers and
    stops it (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) on the way out."""
    port = free_port()
    argv = serve_argv(model, [*engine_flags, "--uvicorn-log-level", "warning"], port)
    cmd = [sys.executable, "-m", "tachyon.cli", *argv[1:]]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log_path)
        yield url
    finally:
        _stop(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tachyon serve exited with {proc.returncode}:\n{log_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"tachyon serve not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-LOG_TAIL_CHARS:]


def run_bench(url: str, workload: Workload, output: str) -> list[LevelStats]:
    """`tachyon bench` in this process (its own command line); the per-level figures from its JSON."""
    from tachyon.bench.results import load_json
    from tachyon.cli import main

    logging.getLogger("httpx").setLevel(logging.WARNING)
    stderr = _Tee(sys.stderr)
    with contextlib.redirect_stderr(stderr):
        code = main(bench_argv(url, workload, output)[1:])
    if code == 130:  # bench turns Ctrl-C into an exit status; the whole validation stops, as it would
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(f"tachyon bench exited with {code}: {stderr.getvalue()[-LOG_TAIL_CHARS:]}")
    return [
        LevelStats(
            b.level.streams,
            b.stats.completed,
            b.stats.failed,
            b.stats.output_throughput,
            b.stats.ttft.median,
            b.stats.ttft.p99,
            b.stats.itl.median,
            b.stats.itl.p99,
        )
        for b in load_json(output).benchmarks
    ]


class _Tee(io.StringIO):
    """stderr that still reaches the terminal (progress bars) and keeps a copy for the error message."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()


def bench_commands(model: str | None, engine_flags: list[str], workload: Workload, output: str) -> str:
    """The two shell commands behind the serving figures (port 8000 stands for the free port used)."""
    serve = shlex.join(serve_argv(model, engine_flags, 8000))
    bench = shlex.join(bench_argv("http://127.0.0.1:8000", workload, output))
    return f"{serve} &\n{bench}"
