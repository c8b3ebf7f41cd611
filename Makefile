# Every target does its own set-up: a virtualenv in .venv with the project installed (editable,
# with the test extras), rebuilt when pyproject.toml or setup.py change.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test native lint check bench clean

# a new native/*.pyx (or .pxd) is a new module: the install builds it
$(STAMP): pyproject.toml setup.py $(wildcard native/*.pyx native/*.pxd)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel Cython
	$(PIP) -e '.[test]'
	touch $@

# Rebuild the native modules in place when one is stale: `python -m proxy._native` compares
# each with the SHA-256 of its sources that the build recorded (setup.py native_sources() is
# the table of them, so nothing is listed here twice). The rebuild ignores PROXY_NO_NATIVE:
# it brings the built files up to date (the parity tests use them); which twin runs is decided
# at run time.
native: $(STAMP)
	@$(PY) -m proxy._native -q || env -u PROXY_NO_NATIVE $(PIP) --no-deps --no-build-isolation -e .

run: native
	$(VENV)/bin/clbscf-proxy --listen :8080

test: native
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff (rules in pyproject.toml) and mypy --strict over proxy/; both are tools, not
# dependencies, so the target installs them itself, pinned: a new release that adds checks
# must not turn CI red on its own. `check` is the older name.
LINTERS ?= ruff==0.17.6 mypy==2.4.1
lint: $(STAMP)
	$(PIP) $(LINTERS)
	$(PY) -m ruff check proxy tests benchmarks
	$(PY) -m mypy

check: lint

# The benchmark harness installs what it needs (nginx, wrk, uvicorn) itself.
BENCH_ARGS ?=
bench: native
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info proxy/_speedups/*.so proxy/_speedups/*.sha256 native/*.c \
	       proxy/scf/*.c
