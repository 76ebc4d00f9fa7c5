# marginflow — the two commands: `make run` (the whole platform, locally) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
MONITORING := deploy/local/monitoring.sh
PKI := deploy/local/pki.sh
# Addresses of Kafka and Redis: the local stack's unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set.
STACK_ENV = $(shell $(STACK) env | xargs)

.PHONY: help venv build protos tools pki run stop status test test-unit test-integration bench clean distclean stack-up stack-down

help:
	@echo "make run     build, start Kafka + Redis + every marginflow service (Ctrl-C or 'make stop' ends it)"
	@echo "make test    build, start Kafka + Redis, run the whole test suite"
	@echo "make bench   benchmarks (ratios against in-process baselines)"
	@echo "make stop    stop everything 'make run' or 'make test' started"
	@echo "make status  what is running"

# The virtual environment, from the pinned versions in requirements.lock (the one place versions live).
$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v $(PYTHON_BIN) >/dev/null || { echo "$(PYTHON_BIN) is needed"; exit 1; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

venv: $(VENV)/.installed

# Generated protobuf/gRPC modules (never committed, never edited).
PROTO_SRC := $(shell find protos -name '*.proto')
services/marginflow/api/.generated: $(VENV)/.installed $(PROTO_SRC) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $@

protos: services/marginflow/api/.generated

# The package itself, editable, with the C margin core compiled in place.
CORE_SRC := $(wildcard services/marginflow/core/*.c services/marginflow/core/*.h) $(wildcard setup.py)
$(VENV)/.built: $(VENV)/.installed services/marginflow/api/.generated $(CORE_SRC)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

tools:
	deploy/local/tools.sh

pki:
	@$(PKI) ensure

stack-up: tools
	$(STACK) up
stack-down:
	$(STACK) down

# Starts the stack, Prometheus + Alertmanager and the supervisor in the foreground; Ctrl-C stops them all.
# gRPC is TLS with tokens: the local CA, certificates and role tokens are made on first start (pki.sh).
# KAFKA_SASL=1 / REDIS_ACL=1: the broker with SCRAM users and ACLs / Redis with ACL users, one user per service.
run: build pki stack-up
	@trap '$(STACK) down' EXIT; $(MONITORING) start && env $(STACK_ENV) $$($(MONITORING) env | xargs) $$($(PKI) env | xargs) $(PY) -m marginflow.supervisor $(if $(REPLAY),--replay $(REPLAY)) $(if $(SPEED),--speed $(SPEED)) $(if $(UNIVERSE),--universe $(UNIVERSE))

stop:
	$(STACK) down

status:
	-$(STACK) status

test: build stack-up
	env $(STACK_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-unit: build tools
	$(PY) -m pytest tests/unit tests/golden $(PYTEST_ARGS)

test-integration: build stack-up
	env $(STACK_ENV) $(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: build stack-up
	env $(STACK_ENV) $(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build services/*.egg-info services/marginflow/api $(VENV)/.built
	find services tests -name '__pycache__' -type d -prune -exec rm -rf {} +
	find services -name '*.so' -delete

distclean: stop clean
	rm -rf $(VENV) .run

-include mk/*.mk
