# Two commands for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp
CURSOR_DB ?= var/cursor.db
CURSOR_LISTEN ?= 127.0.0.1:50051
export CURSOR_DB CURSOR_LISTEN

.PHONY: setup serve test test-fast test-slow chaos lint typecheck generate check-generated buf clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Set up, apply migrations, and serve on the embedded default (SQLite file, loopback port).
serve: setup
	$(BIN)/cursor-grpc migrate
	$(BIN)/cursor-grpc serve

## The first admin, on the database `make serve` uses (the same CURSOR_DB); the password comes from
## CURSOR_ADMIN_PASSWORD or a prompt: `make create-admin EMAIL=admin@example.com`.
.PHONY: create-admin
create-admin: setup
	@test -n "$(EMAIL)" || { echo "usage: make create-admin EMAIL=you@example.com [NAME='Your Name']"; exit 2; }
	$(BIN)/cursor-grpc create-admin --db "$(CURSOR_DB)" --email "$(EMAIL)" $(if $(NAME),--display-name "$(NAME)")

## The whole suite: lint, types, stale stubs, buf lint/breaking, tests. CI runs exactly this.
## It installs the bench extra too: a test draws the benchmark chart.
test: $(BENCH_STAMP) lint typecheck check-generated buf
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

## Only the long-running tests (e.g. the 60 s WAL bound under load).
test-slow: $(BENCH_STAMP)
	$(BIN)/pytest -m slow

## Kills and fuzzing at full size: 50 SIGKILLs under load, 100,000 fuzz examples (`make test`: 5 kills, the fuzz default).
chaos: setup
	CURSOR_CHAOS_KILLS=50 CURSOR_FUZZ_EXAMPLES=100000 $(BIN)/pytest -o timeout=3600 tests/test_chaos.py tests/test_fuzz.py

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

generate: setup
	$(BIN)/python tools/gen_protos.py

check-generated: setup
	$(BIN)/python tools/gen_protos.py --check

## buf lint, and buf breaking against the previous commit (skipped, with a note, in a checkout without one).
buf: setup
	$(BIN)/python tools/buf_check.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Benchmarks (tools/bench.py): the `bench` extra adds the progress bar and the chart.
.PHONY: bench bench-quick bench-attention

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## Real server, separate client processes, every figure beside its baseline (under 10 minutes).
## Table on stdout; JSON, Markdown and a PNG chart in bench-results/.
bench: $(BENCH_STAMP)
	$(BIN)/python tools/bench.py

## The same with smaller sizes and shorter runs (under 2 minutes).
bench-quick: $(BENCH_STAMP)
	$(BIN)/python tools/bench.py --quick

## How long after its trigger each attention signal reaches a watcher, 100 readers (under a minute).
bench-attention: setup
	$(BIN)/python tools/attention_bench.py --check
