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

.PHONY: install run demo test test-py lint proto clean faults debian-packages

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

# Regenerate every stub from proto/ (pinned generator versions: reproducible);
# the Java client generates its stubs at build time: clients-gen rebuilds it.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(PY_STUBS) --grpc_python_out=$(PY_STUBS) \
	  --mypy_out=$(PY_STUBS) --mypy_grpc_out=$(PY_STUBS) \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  $(PROTO_FILES)
	$(MAKE) clients-gen

run: $(STAMP)
	$(BIN)/gpt-grpc-server

demo: $(STAMP)
	$(PY) -m demo

# Everything CI checks: the Python suite (servers on loopback, the short fault
# campaign, stale-stub checks, grpcurl/ghz/grpc-health-probe against the
# gateway, the error table against aimock), then the Go, TypeScript and Java
# clients, the contract suite in each, and buf lint + breaking against the last release.
test: $(STAMP) debian-packages
	$(MAKE) grpc-tools aimock
	$(BIN)/pytest -q
	$(MAKE) clients-build clients-test contract-test proto-check

test-py: $(STAMP) debian-packages
	$(MAKE) grpc-tools aimock
	$(BIN)/pytest -q

# Debian packages the tests run as real processes: redis-server (the shared
# store) and nginx (grpc_pass in front of gateway replicas). Installed when
# missing, never started as system services: the tests start their own, on free
# loopback ports with their own config and temporary directories. Under a
# policy-rc.d answering 101 ("action forbidden"; written for the install and
# removed after, unless one is already in place, as in Debian container images)
# the packages' postinst scripts start nothing, so no system nginx is left on
# port 80 and no redis on 6379. Fast when installed: two
# `command -v`. Needs root (CI runs as root); `apt-get update` only when the
# install fails on a stale package list.
DEBIAN_PACKAGES := redis-server nginx
DEBIAN_POLICY_RC := /usr/sbin/policy-rc.d

debian-packages:
	@missing=""; \
	for pkg in $(DEBIAN_PACKAGES); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$pkg >/dev/null || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing (services not started)"; \
	  own_policy=""; \
	  if [ ! -e $(DEBIAN_POLICY_RC) ]; then \
	    printf '#!/bin/sh\n# written by gpt-grpc make debian-packages: start no service\nexit 101\n' > $(DEBIAN_POLICY_RC); \
	    chmod 755 $(DEBIAN_POLICY_RC); own_policy=1; \
	  fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $$missing \
	    || (apt-get update && apt-get install -y --no-install-recommends $$missing); \
	  status=$$?; \
	  if [ -n "$$own_policy" ]; then rm -f $(DEBIAN_POLICY_RC); fi; \
	  exit $$status; \
	fi

# The full fault campaign (3,000 calls at concurrency 200, 20% faults) and the
# retry-budget run (upstream answering 503 for 10 s at concurrency 100).
faults: $(STAMP)
	$(PY) -m tests.faults.campaign --scenario faults --calls 3000 --concurrency 200
	$(PY) -m tests.faults.campaign --scenario budget --duration 10 --concurrency 100

lint: $(STAMP)
	$(BIN)/ruff check server clients/python/src/gpt_grpc_client tests bench demo
	$(BIN)/ruff format --check server clients/python/src/gpt_grpc_client tests bench demo
	$(BIN)/mypy

clean: clients-clean
	rm -rf $(VENV) .mypy_cache .ruff_cache $(TOOLS_BIN) $(AIMOCK_DIR)/node_modules

# Last, so that `install` stays the default goal.
include clients/clients.mk
include bench/bench.mk
include tests/tools/tools.mk
include tests/aimock/aimock.mk
