# jellydemon — developer entry points. `make demo` and `make test` work on a fresh Debian/Ubuntu
# machine as root: they install what they need first.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps test test-rust test-luci test-package demo bench clean

all: build

build:
	$(CARGO) build --release

# ---- deps: system packages and toolchains the tests need (idempotent) ----
deps:
	tests/deps.sh

# ---- test: everything, as CI runs it ----
test: deps test-rust test-luci test-package

test-rust:
	$(CARGO) build --examples
	$(CARGO) test --all-targets

# ---- test-luci: lint + browser tests of luci-app-jellydemon (Chromium from apt, npm packages
# pinned by tests/luci/package-lock.json; no browser download) ----
test-luci: deps
	cd tests/luci && npm ci --no-audit --no-fund
	cd tests/luci && npm run lint
	cd tests/luci && npm test

test-package:
	@echo "(package tests: to be written)"

# ---- demo: the real daemon in an emulated home network ----
# Root is needed for network namespaces. Leftovers of an interrupted earlier run are removed
# first (only namespaces whose creating process is gone).
demo: deps
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root (it builds network namespaces)"; exit 1; }
	$(CARGO) build --release --example homenet
	$(CARGO) build --release
	target/release/examples/homenet down --all
	target/release/examples/homenet demo --daemon target/release/jellydemon

# ---- bench ----
bench: deps
	@echo "(bench: to be written)"

clean:
	$(CARGO) clean
	rm -rf dist build
