# gpt-grpc: every target installs what it needs first, into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTO_DIR := proto
PROTO_FILES := $(shell find $(PROTO_DIR) -name '*.proto' | sort)
PY_STUBS := clients/python/src

.PHONY: install run demo test test-py lint proto proto-check clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

# Regenerate every stub from proto/ (pinned generator versions: reproducible).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(PY_STUBS) --grpc_python_out=$(PY_STUBS) \
	  --mypy_out=$(PY_STUBS) --mypy_grpc_out=$(PY_STUBS) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  $(PROTO_FILES)

run: $(STAMP)
	$(BIN)/gpt-grpc-server

demo: $(STAMP)
	$(PY) -m gpt_grpc.demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check server clients/python/src/gpt_grpc_client tests
	$(BIN)/ruff format --check server clients/python/src/gpt_grpc_client tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
