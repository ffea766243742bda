# relay — the two commands: `make run` (set up, start a demo edge + agent) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
NATIVE_SRC := $(wildcard native/src/*.rs) native/Cargo.toml native/pyproject.toml
FASTPATH_SRC := $(wildcard relay/*.pyx relay/*.pxd) setup.py

# Every Python package (runtime, build tools, test tools) comes from requirements/dev.txt,
# pinned with hashes; `make lock` refreshes the locks from pyproject.toml and build.in.
LOCKED := install --require-hashes --only-binary :all:

.PHONY: run test setup native fastpath rust-test fuzz-smoke interop pytest lint lock image \
	bench bench-full clean

run: setup
	$(VENV)/bin/relay demo

test: setup
	@scripts/check-prereqs.sh test
	@scripts/install-test-deps.sh
	@scripts/install-prometheus.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory rust-test
	$(MAKE) --no-print-directory fuzz-smoke
	$(MAKE) --no-print-directory pytest

setup: $(VENV)/.deps native fastpath

$(VENV)/.deps: pyproject.toml requirements/dev.txt scripts/check-prereqs.sh
	@scripts/check-prereqs.sh build
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The locked pip first: it installs the big set faster than an old venv's pip.
	$(PIP) $(LOCKED) -r requirements/build.txt
	$(PIP) $(LOCKED) -r requirements/dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -m pip check -q
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
	$(VENV)/bin/hadolint --disable-ignore-pragma --failure-threshold style Dockerfile

lock: $(VENV)/.deps
	scripts/lock-requirements.sh $(if $(UPGRADE),--upgrade)

# Needs a container engine; the same build, without one: scripts/install-prefix.sh PREFIX.
image:
	docker build -t relay:$$($(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') .

bench: setup
	$(PY) -m bench quick

bench-full: setup
	$(PY) -m bench full

clean:
	rm -rf $(VENV) build native/target relay/*.so relay/_fastpath.c
