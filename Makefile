# Entry points: `make setup`, `make test`, `make run`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
VENV_CHECKOV := .venv-checkov
CHECKOV_STAMP := $(VENV_CHECKOV)/.installed

.PHONY: setup test run bench lint clean

setup: $(STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# checkov pins pycep-parser 0.5.1 (the project uses 0.7.1), so it gets its own venv; used by tests/infra/test_checkov.py
$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(VENV_CHECKOV)/bin/python || $(PYTHON) -m venv $(VENV_CHECKOV)
	$(VENV_CHECKOV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV_CHECKOV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

run: setup
	$(PY) -m devhost.run

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_CHECKOV) node_modules .local
