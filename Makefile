# Entry points: `make run`, `make test` (and `make setup`, `make bench`, `make lint`).
# `make run` installs only what it runs (.venv, npm ci for Azurite); `make test` also the checkov venv.
# Each install step says what it installs and how long it took (pip and npm show their own progress).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
VENV_CHECKOV := .venv-checkov
CHECKOV_STAMP := $(VENV_CHECKOV)/.installed
PIP := -m pip install --disable-pip-version-check --progress-bar off
# $(call step,WHAT,COMMANDS): announce WHAT, run COMMANDS, say how long it took (or that it failed).
step = @start=$$(date +%s); echo "setup: $(1) ..."; \
	if { $(2); }; then echo "setup: $(1): done in $$(( $$(date +%s) - start )) s"; \
	else echo "setup: $(1): FAILED after $$(( $$(date +%s) - start )) s" >&2; exit 1; fi

.PHONY: setup setup-run test run bench lint clean

setup: setup-run $(CHECKOV_STAMP)

setup-run: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(call step,Python venv $(VENV) from requirements.txt + requirements-dev.txt,\
		(test -x $(PY) || $(PYTHON) -m venv $(VENV)) && \
		$(PY) $(PIP) --quiet --upgrade pip && \
		$(PY) $(PIP) -r requirements-dev.txt)
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	$(call step,npm ci: Azurite and Microsoft's Hybrid Connections clients (package-lock.json),\
		npm ci --no-audit --no-fund)
	@touch $@

# checkov pins pycep-parser 0.5.1 (the project uses 0.7.1), so it gets its own venv; used by tests/infra/test_checkov.py
$(CHECKOV_STAMP): requirements-checkov.txt
	$(call step,checkov venv $(VENV_CHECKOV) from requirements-checkov.txt (tests only),\
		(test -x $(VENV_CHECKOV)/bin/python || $(PYTHON) -m venv $(VENV_CHECKOV)) && \
		$(VENV_CHECKOV)/bin/python $(PIP) --quiet --upgrade pip && \
		$(VENV_CHECKOV)/bin/python $(PIP) -r requirements-checkov.txt)
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

run: setup-run
	$(PY) -m devhost.run

bench: setup-run
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_CHECKOV) node_modules .local
