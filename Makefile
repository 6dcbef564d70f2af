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

# ---- bench: efficiency figures and budgets (DESIGN.md §10, docs-bench.md) ----
# The daemon measured is the static musl release build (as shipped: a glibc build maps the shared
# libc and shows ~1.8 MB more RSS). Cross builds and packages are measured when `make cross` /
# `make ipk` exist.
BENCH_MUSL := x86_64-unknown-linux-musl
bench: deps
	@[ "$$(id -u)" = 0 ] || { echo "make bench needs root (it builds network namespaces)"; exit 1; }
	@command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq valgrind; }
	$(CARGO) build --release --example homenet
	rustup target list --installed | grep -qx $(BENCH_MUSL) || rustup target add $(BENCH_MUSL)
	$(CARGO) build --release --target $(BENCH_MUSL)
	@if grep -q '^cross:' Makefile; then $(MAKE) cross; fi
	@if grep -q '^ipk:' Makefile; then $(MAKE) ipk; fi
	target/release/examples/homenet down --all
	args=(--daemon target/$(BENCH_MUSL)/release/jellydemon); \
	for t in target/*/release/jellydemon; do \
	  case "$$t" in target/mipsel*) a=mipsel;; target/aarch64*) a=aarch64;; \
	    target/$(BENCH_MUSL)/*) a=x86_64;; *) continue;; esac; \
	  args+=(--binary "$$a=$$t"); \
	done; \
	for p in dist/*.ipk; do [ -f "$$p" ] && args+=(--package "$$p"); done; \
	target/release/examples/homenet bench "$${args[@]}"

clean:
	$(CARGO) clean
	rm -rf dist build
