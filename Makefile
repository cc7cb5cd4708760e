# The two commands a new user needs: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# Cerbos for `make bench` (issue 19): the binary its npm package ships, pinned. npm calls the
# architectures x64 and arm64; Cerbos publishes linux-x64 (elsewhere the Cerbos part is skipped).
CERBOS_VERSION := 0.55.0
CERBOS_ARCH := $(subst aarch64,arm64,$(subst x86_64,x64,$(shell uname -m)))
CERBOS_PKG := @cerbos/cerbos-linux-$(CERBOS_ARCH)
CERBOS := .tools/node_modules/$(CERBOS_PKG)/cerbos-linux-$(CERBOS_ARCH)
# Where `make bench` writes its report; `make bench BENCH_OUT=docs/benchmarks.md` for the committed one.
BENCH_OUT ?= data/bench/benchmarks.md

.PHONY: install demo test lint chromium proto proto-check bench clean

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

# Page tests need Debian's chromium: installed here when missing and running as root (CI is root);
# otherwise those tests are skipped and pytest says why.
chromium:
	@[ -x /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the browser tests will be skipped"

test: lint chromium
	$(BIN)/python -m pytest -q

# The benchmark suite (issues 7 and 19): installs the peers, h2load (Debian's nghttp2-client, as
# root) and Cerbos (npm, into .tools/), then writes $(BENCH_OUT). Progress goes to stderr.
# `make bench BENCH_ARGS=--quick` for a short run.
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@command -v h2load >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; } || \
		echo "h2load unavailable (not root?): the end-to-end and Cerbos parts will be skipped"
	@[ "$$($(CERBOS) --version 2>/dev/null | head -n 1)" = "$(CERBOS_VERSION)" ] || \
		npm install --prefix .tools --no-fund --no-audit --silent --save-exact \
			$(CERBOS_PKG)@$(CERBOS_VERSION) || \
		echo "$(CERBOS_PKG)@$(CERBOS_VERSION) unavailable from npm: the Cerbos part will be skipped"
	$(BIN)/python -m authz.bench --out $(BENCH_OUT) --cerbos $(CERBOS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools data .pytest_cache
