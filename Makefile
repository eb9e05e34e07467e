# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The subset of the tox matrix that CI runs (the full matrix: make test-all).
CI_ENVS ?= lint,py311-celery57,py39-celery53

# With pyenv, put every installed Python 3 on PATH so tox finds python3.X
# (pyenv's shims only answer for the active version); the default stays first.
PYENV_ROOT_DIR := $(shell pyenv root 2>/dev/null)
PYENV_DEFAULT := $(shell pyenv version-name 2>/dev/null)
PYENV_ALL := $(PYENV_DEFAULT) $(shell pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$$' | grep -vx '$(PYENV_DEFAULT)')
ifneq ($(PYENV_ROOT_DIR),)
export PATH := $(subst $(eval) ,:,$(foreach v,$(PYENV_ALL),$(PYENV_ROOT_DIR)/versions/$(v)/bin)):$(PATH)
endif

.PHONY: demo test test-all lint servers clean tox

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The tests start private redis-server processes (Sentinels too), build Redis
# Clusters with redis-cli, and start private etcd members; install what this machine lacks.
servers:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || { \
	  echo "redis-server or redis-cli not found: installing them with apt-get"; \
	  apt-get update -q && apt-get install -y -q redis-server redis-tools; }
	@command -v etcd >/dev/null 2>&1 || { \
	  echo "etcd not found: installing etcd-server with apt-get"; \
	  apt-get update -q && apt-get install -y -q etcd-server; }
	@etcd --version | head -1

# The demo's broker is Redis when one answers: kombu's Redis transport comes with celery[redis].
demo: $(BIN)/python
	$(BIN)/pip install -q -e '.[redis]' 'celery[redis]'
	$(BIN)/python examples/cluster_demo.py

# The CI subset leaves out the long scenarios (marked slow); test-all runs everything.
# TEST_WORKERS=2 runs each test file whole on one of two pytest-xdist workers (module
# fixtures are built once; servers take free ports, leases unique names), which
# halves the time; CI stays in one process (0), because timing-bound tests flaked
# under the doubled load (3 of 5 runs on a 2-core machine, a different test each time).
TEST_WORKERS ?= 0
test: $(BIN)/python servers
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox run -e $(CI_ENVS) -- -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-all: $(BIN)/python servers
	$(BIN)/pip install -q 'tox>=4'
	LEADERBEAT_TEST_SLOW=1 $(BIN)/tox run

lint: $(BIN)/python
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox run -e lint

clean:
	rm -rf $(VENV) .tox build dist *.egg-info

# Any tox call with this PATH, e.g. make tox ARGS="-e py39-celery53 -- -k redis"
tox: $(BIN)/python
	$(BIN)/pip install -q 'tox>=4'
	$(BIN)/tox $(ARGS)
