# Two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`;
# `make app` serves the light-control page (app.py) on the embedded default.
# `make setup` only builds .venv (then `source .venv/bin/activate`, or call .venv/bin/python).
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

# Where `make space` assembles the Hugging Face Space (app, model, examples, space/README.md as the Space card).
SPACE_DIR ?= build/space

.PHONY: demo test lint setup render-setup clean-venv sync-copies app space

# The project itself goes in last, editable and without dependencies (they are installed just above, torch first), so
# `pipeline_shadow` and the scripts' modules import from any directory with this venv's python.
$(STAMP): requirements.txt requirements-dev.txt requirements-app.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-app.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
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
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

app: $(STAMP)
	$(PY) app.py

# A folder that runs as a Space on its own; upload it with
#   huggingface-cli upload --repo-type space YOUR_NAME/SPACE_NAME build/space .
space:
	rm -rf $(SPACE_DIR) && mkdir -p $(SPACE_DIR)/models
	cp app.py generate_shadows.py pipeline_shadow.py LICENSE $(SPACE_DIR)/
	cp -r models/shadow-small $(SPACE_DIR)/models/
	cp -r examples $(SPACE_DIR)/
	cp space/README.md space/requirements.txt $(SPACE_DIR)/

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The shipped model folders carry copies of pipeline_shadow.py (root and unet/) so that they load from the Hub with
# trust_remote_code. This refreshes every tracked copy; tests/test_docs.py fails while any copy differs.
sync-copies:
	@git ls-files '*/pipeline_shadow.py' | while read copy; do cp pipeline_shadow.py "$$copy" && echo "refreshed $$copy"; done

clean-venv:
	rm -rf $(VENV) $(RENDER_VENV)
