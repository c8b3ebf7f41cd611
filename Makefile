# Every target does its own set-up: a virtualenv in .venv with the project installed (editable,
# with the test extras), rebuilt when pyproject.toml or setup.py change.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test check bench clean

# proxy/scf/event.py is also compiled as it is (setup.py COMPILED_AS_IS): an edit rebuilds it
$(STAMP): pyproject.toml setup.py $(wildcard native/*.pyx native/*.pxd) proxy/scf/event.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel Cython
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/clbscf-proxy --listen :8080

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Static types (mypy --strict over proxy/); mypy is a tool, not a dependency.
check: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check mypy
	$(PY) -m mypy

# The benchmark harness installs what it needs (nginx, wrk, uvicorn) itself.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info proxy/_speedups/*.so native/*.c
