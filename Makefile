# `make test` and `make demo` work on a fresh machine: they create .venv, install a CPU
# build of torch (no multi-GB CUDA download), the package and its test extras.
# GPU users: `make TORCH_SPEC=torch install` or install your own torch into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip install --disable-pip-version-check -q

PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install test test-fast test-slow demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Markers (setup.cfg): `e2e` whole pipelines, `slow` XLSR-scale work. `make test` runs all but the slow ones and
# lists the 15 slowest; every test has a time limit (setup.cfg: timeout).
test: $(VENV)/.installed
	$(PYTEST) --durations=15 tests

# The quick loop while editing: no end-to-end and no slow tests (under 2 minutes on 2 cores).
test-fast: $(VENV)/.installed
	$(PYTEST) -m "not slow and not e2e" tests

# XLSR-53 shapes on CPU: minutes and several GiB of memory.
test-slow: $(VENV)/.installed
	$(PYTEST) -m slow --durations=15 tests

demo: $(VENV)/.installed
	$(VENV)/bin/lasp run recipes/demo.yaml

bench: $(VENV)/.installed
	$(VENV)/bin/lasp bench

clean:
	rm -rf $(VENV) runs build *.egg-info
