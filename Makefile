# Two commands do all the set-up: `make demo` and `make test` (each creates the venv if missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
MM_STAMP := $(VENV)/.installed-mm

.PHONY: demo test test-slow mm lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade 'pip>=24' 'setuptools>=69,<81'
	$(PY) -m pip install -e '.[dev,onnx]'
	touch $(STAMP)

# OpenMMLab (mmseg, mmdet, and mmcv 2.1.0 built from source once: ~15-25 min on 2 cores, then cached in
# ~/.cache/supernet-zoo/wheels so the next set-up takes seconds).
$(MM_STAMP): $(STAMP) tools/install_mm.sh
	bash tools/install_mm.sh $(VENV)
	touch $(MM_STAMP)

mm: $(MM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/zoo demo --out zoo_table.md

test: $(STAMP) $(MM_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info zoo_table.md
