"""Real `tachyon serve` instances of the 3-layer model and `python -m tachyon.router` processes in
front of them, all on 127.0.0.1. Two replicas are shared by the whole package; tests that kill an
instance start their own."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server.conftest import ServerProcess, TachyonProcess, scrape

INSTANCE_FLAGS = ("--kv-cache-memory", str(64 * 2**20), "--max-model-len", "512")


class RouterProcess(TachyonProcess):
    def __init__(self, *flags: str) -> None:
        super().__init__(["router", "--uvicorn-log-level", "warning", *flags])


@contextlib.contextmanager
def start_router(*flags: str):
    router = RouterProcess(*flags)
    try:
        yield router
    finally:
        router.stop()
        os.unlink(router.log.name)


@contextlib.contextmanager
def start_instances(model_dir: str, count: int, *flags: tuple[str, ...]):
    """`count` instances of the model, started side by side; `flags[i]`: more flags for the i-th."""
    extra = list(flags) + [()] * (count - len(flags))
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(ServerProcess, model_dir, *INSTANCE_FLAGS, *extra[i]) for i in range(count)]
    servers = [f.result() for f in futures if f.exception() is None]
    try:
        if len(servers) < count:
            raise next(f.exception() for f in futures if f.exception() is not None)
        yield servers
    finally:
        for server in servers:
            server.stop()
            os.unlink(server.log.name)


@pytest.fixture(scope="package")
def replicas(shallow_model_dir):
    with start_instances(shallow_model_dir, 2) as servers:
        yield servers


def requests_by_instance(router_url: str, role: str = "replica", outcome: str = "ok") -> dict[str, float]:
    """{instance URL: requests it served with `outcome`} from the router's /metrics."""
    counts = {}
    for name, value in scrape(router_url).items():
        if (
            name.startswith("tachyon_router:requests_total{")
            and f'role="{role}"' in name
            and f'outcome="{outcome}"' in name
        ):
            counts[name.split('instance="', 1)[1].split('"', 1)[0]] = value
    return counts
