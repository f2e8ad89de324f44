# Ladder: `make demo` runs the main job, `make test` passes the tests.
# Both set up whatever a fresh machine lacks first (venv, pinned deps,
# redis-server, generated protobuf code).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ladder-setup
PROTO_SRC := $(wildcard proto/ladder/v1/*.proto)
PROTO_OUT := libs/ladder/v1/__init__.py
PYTEST_ARGS ?=

.PHONY: setup proto up down status demo test test-unit test-integration bench lint clean

setup: $(STAMP) $(PROTO_OUT)

$(STAMP): requirements.lock pyproject.toml
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 resolves to the local CPU build; never let pip pick a CUDA build.
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

proto: $(STAMP)
	rm -rf libs/ladder/v1
	$(PY) -m grpc_tools.protoc -Iproto --python_out=libs --pyi_out=libs \
	  --grpc_python_out=libs $(PROTO_SRC)
	touch $(PROTO_OUT)

$(PROTO_OUT): $(PROTO_SRC) $(STAMP)
	$(MAKE) proto

up: setup
	$(VENV)/bin/ladder up

down:
	@if [ -x $(VENV)/bin/ladder ]; then $(VENV)/bin/ladder down; fi

status: setup
	$(VENV)/bin/ladder status

demo: setup
	$(PY) -m workers.demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

bench: setup
	@echo "no benchmarks yet: bench-quality and bench-earlystop come with issues 3 and 4"

lint: setup
	$(VENV)/bin/ruff check libs services workers tests

clean:
	rm -rf libs/ladder/v1 .ladder .pytest_cache
