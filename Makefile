# The two commands of the README.  Each sets itself up on a fresh clone: it makes
# .venv and installs the package with its dev extras the first time (and again
# whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q $(ARGS)

bench: $(STAMP)
	$(PY) bench/features.py
	$(PY) bench/encoder.py
	$(PY) bench/streaming.py
	$(PY) bench/export.py

lint: $(STAMP)
	$(PY) -m ruff check speechconv tests bench train.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .hypothesis
