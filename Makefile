# Two commands on a fresh machine: `make demo` and `make test`.
# The set-up makes .venv, installs torch first when none is present (a bare `torch` requirement
# would pull a multi-GB CUDA build on a CPU machine), then the project with its test extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

demo: setup
	$(BIN)/llmlab demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
