# The two commands a new user needs: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: install demo test lint proto proto-check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(BUF):
	npm install --prefix .tools --no-fund --no-audit --silent @bufbuild/buf@$(BUF_VERSION)

demo: install
	$(BIN)/authz demo

# Regenerate the Python code for proto/ (commit the result; a test fails when it is stale).
proto: install
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src \
		--grpc_python_out=src proto/authz/v1/*.proto

lint: install $(BUF)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BUF) lint

test: lint
	$(BIN)/python -m pytest -q

# The benchmark suite (issue 7): installs the peers and h2load (Debian's nghttp2-client, as root),
# then writes docs/benchmarks.md. `make bench BENCH_ARGS=--quick` for a short run.
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@command -v h2load >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; } || \
		echo "h2load unavailable (not root?): the end-to-end part will be skipped"
	$(BIN)/python -m authz.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools data .pytest_cache
