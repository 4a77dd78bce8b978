# Two commands do all the set-up: `make demo` and `make test` (each creates the venv if missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade 'pip>=24' 'setuptools>=69'
	$(PY) -m pip install -e '.[dev,onnx]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zoo demo --out zoo_table.md

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info zoo_table.md
