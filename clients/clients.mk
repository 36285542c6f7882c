# Go and TypeScript clients, proto lint/breaking checks and contract tests.
# Included from the top-level Makefile (`include clients/clients.mk`); paths are
# relative to the repository root. Every target installs what it needs first:
# Go modules and the pinned protoc plugins into clients/go/.bin, npm packages
# (buf, protoc-gen-es, typescript) into clients/typescript/node_modules.

include clients/versions.env

CLIENTS_GO ?= go
CLIENTS_NPM ?= npm
CLIENTS_PY ?= .venv/bin/python
# Target of the including Makefile that creates the venv with the server (for contract-test).
CLIENTS_VENV_TARGET ?= install

CLIENTS_GO_DIR := clients/go
CLIENTS_TS_DIR := clients/typescript
CLIENTS_GO_STAMP := $(CLIENTS_GO_DIR)/.bin/.installed
CLIENTS_TS_STAMP := $(CLIENTS_TS_DIR)/node_modules/.installed
CLIENTS_HARNESS := $(CLIENTS_PY) tests/contract/harness.py

.PHONY: clients-install clients-gen clients-build clients-test proto-check contract-test clients-clean

clients-install: $(CLIENTS_GO_STAMP) $(CLIENTS_TS_STAMP)

$(CLIENTS_GO_STAMP): clients/versions.env $(CLIENTS_GO_DIR)/go.mod $(CLIENTS_GO_DIR)/go.sum
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) mod download
	GOBIN="$(abspath $(CLIENTS_GO_DIR)/.bin)" $(CLIENTS_GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN="$(abspath $(CLIENTS_GO_DIR)/.bin)" $(CLIENTS_GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

$(CLIENTS_TS_STAMP): $(CLIENTS_TS_DIR)/package.json $(CLIENTS_TS_DIR)/package-lock.json
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) ci --no-audit --no-fund
	touch $@

# Regenerate clients/go/gptgrpcv1 and clients/typescript/src/gen from proto/.
clients-gen: clients-install
	bash clients/gen.sh

clients-build: clients-install
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) vet ./... && $(CLIENTS_GO) vet -tags contract ./... && $(CLIENTS_GO) build ./...
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) run --silent build

# Staleness of the generated code, wrapper unit tests, contract matcher tests.
clients-test: clients-install
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 ./...
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) test

# buf lint (STANDARD) and buf breaking (FILE) against proto/releases/gptgrpc-v1.binpb.
proto-check: $(CLIENTS_TS_STAMP)
	bash proto/check.sh

# TLS and mutual TLS end to end, Go then TypeScript, in one harness run per mode.
CLIENTS_TLS_TESTS := cd $(CURDIR)/$(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/tlscontract/ \
	&& cd $(CURDIR)/$(CLIENTS_TS_DIR) && $(CLIENTS_NPM) run --silent test:tls

# Client-side round_robin from Go and TypeScript over 3 live gateways (harness --replicas 3).
# The TypeScript test runs from build/, which the contract steps before it compiled
# (`npm run test:balancing` compiles first, for a run on its own).
CLIENTS_BALANCING_TESTS := cd $(CURDIR)/$(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/balancing/ \
	&& cd $(CURDIR)/$(CLIENTS_TS_DIR) && node --test build/contract/balancing.test.js

# tests/contract/cases.json through the Go and TypeScript clients, each against a
# fresh stand-in + gateway started by the harness; then TLS and mTLS from both
# clients against a gateway the harness starts with --tls, then --mtls (test
# certificates made for each run with openssl); then load balancing over 3 gateways.
contract-test: clients-install $(CLIENTS_VENV_TARGET)
	$(CLIENTS_HARNESS) --cwd $(CLIENTS_GO_DIR) -- $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/
	$(CLIENTS_HARNESS) --cwd $(CLIENTS_TS_DIR) -- $(CLIENTS_NPM) run --silent test:contract
	$(CLIENTS_HARNESS) --tls -- sh -c '$(CLIENTS_TLS_TESTS)'
	$(CLIENTS_HARNESS) --mtls -- sh -c '$(CLIENTS_TLS_TESTS)'
	$(CLIENTS_HARNESS) --replicas 3 -- sh -c '$(CLIENTS_BALANCING_TESTS)'

clients-clean:
	rm -rf $(CLIENTS_GO_DIR)/.bin $(CLIENTS_TS_DIR)/node_modules $(CLIENTS_TS_DIR)/dist $(CLIENTS_TS_DIR)/build
