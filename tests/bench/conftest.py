"""One real `tachyon serve` process for the bench tests (started once, on first use), the same
model's tokenizer as the reference for token counts, and `bench(...)`, which runs the
`tachyon bench` command line in-process and returns its exit code, stdout and stderr."""

from __future__ import annotations

import pytest

from tachyon.cli import main
from tests.server.conftest import start_server


@pytest.fixture(scope="session")
def bench_server(model_dir):
    with start_server(model_dir) as server:
        yield server


@pytest.fixture(scope="session")
def bench_url(bench_server) -> str:
    return bench_server.url


@pytest.fixture(scope="session")
def local_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture
def bench(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["bench", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
