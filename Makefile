# `make test` and `make demo` work on a fresh machine: they create .venv, install a CPU
# build of torch (no multi-GB CUDA download), the package and its test extras.
# GPU users: `make TORCH_SPEC=torch install` or install your own torch into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install test demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: $(VENV)/.installed
	$(VENV)/bin/lasp run recipes/demo.yaml

bench: $(VENV)/.installed
	$(VENV)/bin/lasp bench

clean:
	rm -rf $(VENV) runs build *.egg-info
