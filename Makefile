# relay — the two commands: `make run` (set up, start a demo edge + agent) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
NATIVE_SRC := $(wildcard native/src/*.rs) native/Cargo.toml native/pyproject.toml
FASTPATH_SRC := $(wildcard relay/*.pyx relay/*.pxd) setup.py

.PHONY: run test setup native fastpath rust-test fuzz-smoke interop pytest lint bench bench-full clean

run: setup
	$(VENV)/bin/relay demo

test: setup
	@scripts/check-prereqs.sh test
	@scripts/install-test-deps.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory rust-test
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory pytest

setup: $(VENV)/.deps native fastpath

$(VENV)/.deps: pyproject.toml scripts/check-prereqs.sh
	@scripts/check-prereqs.sh build
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -U "pip>=24"
	$(PIP) install "Cython>=3.0" "setuptools>=68" wheel
	$(PIP) install -e ".[dev]" --no-build-isolation
	touch $@

native: $(VENV)/.native
$(VENV)/.native: $(VENV)/.deps $(NATIVE_SRC)
	cd native && ../$(VENV)/bin/maturin develop --release -q
	touch $@

fastpath: $(VENV)/.fastpath
$(VENV)/.fastpath: $(VENV)/.deps $(FASTPATH_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

rust-test:
	cd native && cargo fmt --check && cargo clippy --all-targets -q -- -D warnings && cargo test -q

fuzz-smoke:
	native/fuzz/smoke.sh 30

pytest:
	$(PY) -m pytest -q -p no:cacheprovider

interop: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/interop

lint:
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/ruff format --check relay tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench quick

bench-full: setup
	$(PY) -m bench full

clean:
	rm -rf $(VENV) build native/target relay/*.so relay/_fastpath.c
