# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
# Both create .venv, install torch first (a bare `torch` pulled in by another package could drag a multi-GB
# CUDA build), then the project's requirements.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

# The dataset renderer's Blender (bpy 5.0.1: Python 3.11, numpy<2) lives in its own venv: see requirements-render.txt.
RENDER_VENV ?= .venv-render
RENDER_PY := $(RENDER_VENV)/bin/python
RENDER_STAMP := $(RENDER_VENV)/.installed

.PHONY: demo test lint setup render-setup clean-venv sync-copies

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

setup: $(STAMP)

$(RENDER_STAMP): requirements-render.txt
	@test -x $(RENDER_PY) || $(PYTHON) -m venv $(RENDER_VENV)
	@echo '*' > $(RENDER_VENV)/.gitignore  # never committed, never linted (ruff respects .gitignore)
	$(RENDER_PY) -m pip install --quiet -r requirements-render.txt
	@touch $(RENDER_STAMP)

render-setup: $(RENDER_STAMP)

demo: $(STAMP) $(RENDER_STAMP)
	$(PY) demo.py

test: $(STAMP) $(RENDER_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The shipped model folders carry copies of pipeline_shadow.py (root and unet/) so that they load from the Hub with
# trust_remote_code. This refreshes every tracked copy; tests/test_docs.py fails while any copy differs.
sync-copies:
	@git ls-files '*/pipeline_shadow.py' | while read copy; do cp pipeline_shadow.py "$$copy" && echo "refreshed $$copy"; done

clean-venv:
	rm -rf $(VENV) $(RENDER_VENV)
