# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The subset of the tox matrix that CI runs (the full matrix: make test-all).
CI_ENVS ?= lint,py311-celery57,py39-celery53

# With pyenv, make every installed Python 3 visible to tox (it looks for python3.X
# on PATH); the default interpreter stays first.
PYENV_DEFAULT := $(shell pyenv version-name 2>/dev/null)
PYENV_OTHERS := $(shell pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$$' | grep -vx '$(PYENV_DEFAULT)' | paste -sd: -)
ifneq ($(PYENV_OTHERS),)
export PYENV_VERSION := $(PYENV_DEFAULT):$(PYENV_OTHERS)
endif

.PHONY: demo test test-all lint servers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The tests start private redis-server processes; install it if this machine lacks it.
servers:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  apt-get update -q && apt-get install -y -q redis-server; }

demo: $(BIN)/python
	$(BIN)/pip install -q -e '.[redis]'
	$(BIN)/python examples/cluster_demo.py

test: $(BIN)/python servers
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox run -e $(CI_ENVS)

test-all: $(BIN)/python servers
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox run

lint: $(BIN)/python
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox run -e lint

clean:
	rm -rf $(VENV) .tox build dist *.egg-info
