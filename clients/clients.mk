# Go, TypeScript and Java clients, proto lint/breaking checks and contract tests.
# Included from the top-level Makefile (`include clients/clients.mk`); paths are
# relative to the repository root. Every target installs what it needs first:
# Go modules and the pinned protoc plugins into clients/go/.bin, npm packages
# (buf, protoc-gen-es, typescript) into clients/typescript/node_modules, Maven
# artifacts (libraries, protoc, protoc-gen-grpc-java) into ~/.m2 (clients/java/pom.xml).

include clients/versions.env

CLIENTS_GO ?= go
CLIENTS_NPM ?= npm
CLIENTS_PY ?= .venv/bin/python
# Batch mode, no download progress; -q for builds, not for tests (Surefire's summary is wanted).
CLIENTS_MVN ?= mvn -B -ntp
# Target of the including Makefile that creates the venv with the server (for contract-test).
CLIENTS_VENV_TARGET ?= install

CLIENTS_GO_DIR := clients/go
CLIENTS_TS_DIR := clients/typescript
CLIENTS_GO_STAMP := $(CLIENTS_GO_DIR)/.bin/.installed
CLIENTS_TS_STAMP := $(CLIENTS_TS_DIR)/node_modules/.installed
CLIENTS_JAVA_DIR := clients/java
# Compiled main and test classes, stubs generated from proto/ (rebuilt when a source, the pom or a .proto changes).
CLIENTS_JAVA_STAMP := $(CLIENTS_JAVA_DIR)/target/.built
CLIENTS_JAVA_SOURCES := $(shell find $(CLIENTS_JAVA_DIR)/src -name '*.java' 2>/dev/null) $(shell find proto -name '*.proto')
# Surefire alone, on the classes already built (full coordinates: no plugin-prefix lookup).
CLIENTS_JAVA_SUREFIRE := $(CLIENTS_MVN) org.apache.maven.plugins:maven-surefire-plugin:test
# The Java runners: JUnit tags "contract" and "tls", excluded from the unit run.
CLIENTS_JAVA_RUNNER := $(CLIENTS_JAVA_SUREFIRE) -DexcludedGroups=none -Dgroups=
CLIENTS_HARNESS := $(CLIENTS_PY) tests/contract/harness.py

.PHONY: clients-install clients-gen clients-build clients-test proto-check contract-test clients-clean clients-java-tools

clients-install: $(CLIENTS_GO_STAMP) $(CLIENTS_TS_STAMP) clients-java-tools

$(CLIENTS_GO_STAMP): clients/versions.env $(CLIENTS_GO_DIR)/go.mod $(CLIENTS_GO_DIR)/go.sum
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) mod download
	GOBIN="$(abspath $(CLIENTS_GO_DIR)/.bin)" $(CLIENTS_GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN="$(abspath $(CLIENTS_GO_DIR)/.bin)" $(CLIENTS_GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

$(CLIENTS_TS_STAMP): $(CLIENTS_TS_DIR)/package.json $(CLIENTS_TS_DIR)/package-lock.json
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) ci --no-audit --no-fund
	touch $@

# The JDK (17+) and Maven come with the machine; installed from Debian when missing.
clients-java-tools:
	@command -v mvn >/dev/null && command -v javac >/dev/null || \
	  apt-get install -y maven openjdk-17-jdk-headless || \
	  { apt-get update && apt-get install -y maven openjdk-17-jdk-headless; }

$(CLIENTS_JAVA_STAMP): $(CLIENTS_JAVA_DIR)/pom.xml $(CLIENTS_JAVA_SOURCES) | clients-java-tools
	cd $(CLIENTS_JAVA_DIR) && $(CLIENTS_MVN) -q test-compile
	touch $@

# Regenerate clients/go/gptgrpcv1 and clients/typescript/src/gen from proto/, and
# rebuild the Java client, whose stubs are generated from proto/ at build time.
clients-gen: clients-install
	bash clients/gen.sh
	cd $(CLIENTS_JAVA_DIR) && $(CLIENTS_MVN) -q test-compile -Dgptgrpc.protoc.checkStaleness=false
	touch $(CLIENTS_JAVA_STAMP)

clients-build: clients-install $(CLIENTS_JAVA_STAMP)
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) vet ./... && $(CLIENTS_GO) vet -tags contract ./... && $(CLIENTS_GO) build ./...
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) run --silent build

# Staleness of the generated code, wrapper unit tests, contract matcher tests.
clients-test: clients-install $(CLIENTS_JAVA_STAMP)
	cd $(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 ./...
	cd $(CLIENTS_TS_DIR) && $(CLIENTS_NPM) test
	cd $(CLIENTS_JAVA_DIR) && $(CLIENTS_JAVA_SUREFIRE)

# buf lint (STANDARD) and buf breaking (FILE) against proto/releases/gptgrpc-v1.binpb.
proto-check: $(CLIENTS_TS_STAMP)
	bash proto/check.sh

# TLS and mutual TLS end to end, Go, TypeScript then Java, in one harness run per mode.
CLIENTS_TLS_TESTS := cd $(CURDIR)/$(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/tlscontract/ \
	&& cd $(CURDIR)/$(CLIENTS_TS_DIR) && $(CLIENTS_NPM) run --silent test:tls \
	&& cd $(CURDIR)/$(CLIENTS_JAVA_DIR) && $(CLIENTS_JAVA_RUNNER)tls

# Client-side round_robin from Go and TypeScript over 3 live gateways (harness --replicas 3).
# The TypeScript test runs from build/, which the contract steps before it compiled
# (`npm run test:balancing` compiles first, for a run on its own).
CLIENTS_BALANCING_TESTS := cd $(CURDIR)/$(CLIENTS_GO_DIR) && $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/balancing/ \
	&& cd $(CURDIR)/$(CLIENTS_TS_DIR) && node --test build/contract/balancing.test.js

# tests/contract/cases.json through the Go, TypeScript and Java clients, each
# against a fresh stand-in + gateway started by the harness; then TLS and mTLS
# from the three clients against a gateway the harness starts with --tls, then
# --mtls (test certificates made for each run with openssl); then load balancing
# from Go and TypeScript over 3 gateways.
contract-test: clients-install $(CLIENTS_VENV_TARGET) $(CLIENTS_JAVA_STAMP)
	$(CLIENTS_HARNESS) --cwd $(CLIENTS_GO_DIR) -- $(CLIENTS_GO) test -count=1 -tags contract ./internal/contract/
	$(CLIENTS_HARNESS) --cwd $(CLIENTS_TS_DIR) -- $(CLIENTS_NPM) run --silent test:contract
	$(CLIENTS_HARNESS) --cwd $(CLIENTS_JAVA_DIR) -- $(CLIENTS_JAVA_RUNNER)contract
	$(CLIENTS_HARNESS) --tls -- sh -c '$(CLIENTS_TLS_TESTS)'
	$(CLIENTS_HARNESS) --mtls -- sh -c '$(CLIENTS_TLS_TESTS)'
	$(CLIENTS_HARNESS) --replicas 3 -- sh -c '$(CLIENTS_BALANCING_TESTS)'

clients-clean:
	rm -rf $(CLIENTS_GO_DIR)/.bin $(CLIENTS_TS_DIR)/node_modules $(CLIENTS_TS_DIR)/dist $(CLIENTS_TS_DIR)/build $(CLIENTS_JAVA_DIR)/target
