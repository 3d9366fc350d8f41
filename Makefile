# `make test` and `make demo` work on a fresh machine: they create .venv, install a CPU
# build of torch (no multi-GB CUDA download), the package and its test extras.
# GPU users: `make TORCH_SPEC=torch install` or install your own torch into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip install --disable-pip-version-check -q

PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: install test test-fast test-slow demo bench clean gpu-wheels gpu-install gpu-check

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

# removes what `make install` and `make gpu-wheels` made; run outputs (runs/) are the user's and stay
clean:
	rm -rf $(VENV) build *.egg-info $(GPU_WHEELS)

# ---- A GPU machine without network -------------------------------------------------------------------------
# The GPU machine runs CPython 3.12 on manylinux x86_64 and already holds torch, transformers, triton, peft,
# accelerate, tensorboard, matplotlib, scipy, pyyaml, tqdm, safetensors, numpy, pyarrow, pandas, fsspec,
# huggingface-hub, click and pytest. `make gpu-wheels` (here, with pip access) downloads the wheels lasp needs
# beyond those into GPU_WHEELS; carry that folder with the working tree and run `make gpu-install` there.
# Every wheel is pinned and fetched without its dependencies, so nothing the machine has (torch above all) is
# downloaded; the list is lasp's dependency closure resolved against those packages.
# wordfreq is left out: its wheel alone is 54 MiB, over what the folder may hold. Only the synthesized demo
# corpus (lasp.data.synth) needs it; manifests of real audio (Common Voice layout) do not.
GPU_PYTHON ?= python3
GPU_WHEELS ?= .gpu-wheels
GPU_WHEELS_MAX_MIB ?= 60
# what `make gpu-install` asks for by name; pip adds the listed dependencies from the folder
GPU_PACKAGES := jiwer soundfile soxr torch-pruning espeakng-loader zstandard pytest
# datasets also needs pyarrow (a 52 MiB wheel, over what the folder may hold) and pandas: it is installed only where
# the machine has them. Only `lasp data import-hf` uses it; nothing in gpu-check does.
GPU_OPTIONAL := datasets
GPU_PINS := \
	jiwer==4.0.0 rapidfuzz==3.14.6 \
	soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
	soxr==1.1.0 \
	torch-pruning==1.6.1 \
	datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 xxhash==4.1.0 \
	espeakng-loader==0.2.4 \
	zstandard==0.25.0 \
	pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
# fsspec and pytest are there in case the machine's own fail datasets' cap (fsspec<=2026.9.0) or are missing;
# pip keeps an installed version that satisfies the requirement and leaves the wheel unused.
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-wheels:
	rm -rf $(GPU_WHEELS).part
	$(PYTHON) -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d $(GPU_WHEELS).part $(GPU_PINS)
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).part $(GPU_WHEELS)
	@ls -1 $(GPU_WHEELS)
	@bytes=$$(cat $(GPU_WHEELS)/*.whl | wc -c); \
	 echo "$(GPU_WHEELS): $$(ls $(GPU_WHEELS) | wc -l) wheels, $$(awk "BEGIN {printf \"%.1f\", $$bytes / 1048576}") MiB ($$bytes bytes)"; \
	 if [ $$bytes -gt $$(($(GPU_WHEELS_MAX_MIB) * 1048576)) ]; then \
		echo "$(GPU_WHEELS) is over $(GPU_WHEELS_MAX_MIB) MiB"; exit 1; fi

# Into GPU_PYTHON itself (no venv: the machine's CUDA torch lives there), offline, lasp editable without deps.
gpu-install:
	@[ -d $(GPU_WHEELS) ] || { echo "$(GPU_WHEELS) is missing: run 'make gpu-wheels' where pip reaches PyPI and carry the folder"; exit 1; }
	$(GPU_PYTHON) -m pip install --disable-pip-version-check -q --no-index --find-links $(GPU_WHEELS) $(GPU_PACKAGES)
	$(GPU_PYTHON) -m pip install --disable-pip-version-check -q --no-index --find-links $(GPU_WHEELS) $(GPU_OPTIONAL) \
		|| echo "gpu-install: $(GPU_OPTIONAL) not installed (it needs pyarrow and pandas, which this machine lacks); only 'lasp data import-hf' uses it"
	$(GPU_PYTHON) -m pip install --disable-pip-version-check -q --no-index --no-deps --no-build-isolation -e .
	$(GPU_PYTHON) -c "import lasp, torch, transformers; print('lasp from', lasp.__file__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

# One command that accepts a GPU machine (docs/gpu.md): pytest -m gpu, lasp bench at XLSR-53 shapes, a one-process
# torchrun (NCCL) fine-tune and a few steps of every stage of `lasp run` on the xlsr-53 preset, about 8 minutes on
# one H100/H200. One JSON summary and one log under OUT; PASS/FAIL per item. GPU_CHECK_DEVICE=cpu: the CPU dry run.
OUT ?= runs/gpu-check
GPU_CHECK_DEVICE ?= cuda

gpu-check: gpu-install
	OUT=$(OUT) GPU_CHECK_DEVICE=$(GPU_CHECK_DEVICE) $(GPU_PYTHON) -m lasp.bench.gpu_check
