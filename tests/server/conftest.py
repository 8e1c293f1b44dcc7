"""A real `tachyon serve` process on 127.0.0.1 for the server tests (started once per session),
and `start_server` for tests that need one with other flags."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

# small KV pool and context: fast start-up, and prompts over the limit are cheap to build
SERVER_FLAGS = ("--kv-cache-memory", str(256 * 2**20), "--max-model-len", "1024", "--uvicorn-log-level", "warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TachyonProcess:
    """`python -m tachyon.cli ARGS --port P` on 127.0.0.1 (or under `prefix`, e.g. `ip netns exec NS`),
    logging to a temporary file, waited for until GET /health answers 200."""

    def __init__(self, args: list[str], prefix: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        cmd = [*prefix, sys.executable, "-m", "tachyon.cli", *args, "--port", str(self.port)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy(timeout=120)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[:6]} exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.url} not healthy after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class ServerProcess(TachyonProcess):
    def __init__(self, model_dir: str, *flags: str) -> None:
        super().__init__(["serve", model_dir, "--host", "127.0.0.1", *SERVER_FLAGS, *flags])


@contextlib.contextmanager
def start_server(model_dir: str, *flags: str):
    server = ServerProcess(model_dir, *flags)
    try:
        yield server
    finally:
        server.stop()
        os.unlink(server.log.name)


@pytest.fixture(scope="session")
def server(model_dir):
    with start_server(model_dir) as s:
        yield s


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.url


@pytest.fixture(scope="session")
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def model_name(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def scrape(base_url: str) -> dict[str, float]:
    """/metrics as {sample line name (with labels): value}."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
