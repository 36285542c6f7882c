# aimock (npm @copilotkit/aimock), an OpenAI-compatible mock nobody on the project
# wrote: tests/test_aimock.py runs the README's error table against it. Pinned in
# tests/aimock/package.json and its lock, installed with `npm ci` into
# tests/aimock/node_modules (as clients.mk does for the TypeScript client).
# Included from the top-level Makefile; `make test` needs it.

AIMOCK_NPM ?= npm
AIMOCK_DIR := tests/aimock
AIMOCK_STAMP := $(AIMOCK_DIR)/node_modules/.installed

.PHONY: aimock

aimock: $(AIMOCK_STAMP)

$(AIMOCK_STAMP): $(AIMOCK_DIR)/package.json $(AIMOCK_DIR)/package-lock.json
	cd $(AIMOCK_DIR) && $(AIMOCK_NPM) ci --no-audit --no-fund
	touch $@
