# Benchmark targets. Included from the top-level Makefile (after its variables):
#   include bench/bench.mk
# `make bench` runs the full comparison (about 6 minutes; writes bench/results/),
# `make bench-smoke` a tiny one (about 20 seconds; bench/results/smoke/) that CI keeps working.
# Extra flags: make bench BENCH_ARGS="--no-scaling --windows 5"
# Both need ghz (the ghz row), built by `make grpc-tools` (tests/tools/tools.mk).

BENCH_STAMP ?= $(or $(STAMP),.venv/.installed)
BENCH_PY ?= $(or $(PY),.venv/bin/python)
BENCH_ARGS ?=

.PHONY: bench bench-smoke

bench: $(BENCH_STAMP) grpc-tools
	$(BENCH_PY) bench/run.py $(BENCH_ARGS)

bench-smoke: $(BENCH_STAMP) grpc-tools
	$(BENCH_PY) bench/run.py --smoke --out bench/results/smoke $(BENCH_ARGS)
