# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv, install torch first (a bare `torch` pulled in by another package could drag a multi-GB
# CUDA build), then the project's requirements.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean-venv

$(STAMP): requirements.txt requirements-dev.txt requirements-render.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-render.txt
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-venv:
	rm -rf $(VENV)
