# The gRPC ecosystem's own tools, which tests/test_grpc_tools.py drives against the
# gateway through server reflection alone: grpcurl (list, describe, call), ghz (load,
# needs 0.120+ to read proto3 `optional`) and grpc-health-probe (serving, draining).
# Pinned, built from the Go module proxy into tests/tools/.bin (as clients.mk does
# for the protoc plugins). Included from the top-level Makefile; `make test` needs it.

GRPCURL_VERSION := v1.9.4
GHZ_VERSION := v0.120.0
GRPC_HEALTH_PROBE_VERSION := v0.4.63

TOOLS_GO ?= go
TOOLS_BIN := tests/tools/.bin
TOOLS_STAMP := $(TOOLS_BIN)/.installed

.PHONY: grpc-tools

grpc-tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): tests/tools/tools.mk
	GOBIN="$(abspath $(TOOLS_BIN))" $(TOOLS_GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	GOBIN="$(abspath $(TOOLS_BIN))" $(TOOLS_GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	GOBIN="$(abspath $(TOOLS_BIN))" $(TOOLS_GO) install github.com/grpc-ecosystem/grpc-health-probe@$(GRPC_HEALTH_PROBE_VERSION)
	touch $@
