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

test-luci:
	@echo "(luci tests: to be written)"

test-package: deps
	tests/package.sh

# ---- demo: the real daemon in an emulated home network ----
demo: deps
	$(CARGO) build --release --example homenet
	$(CARGO) build --release
	target/release/examples/homenet demo --daemon target/release/jellydemon

# ---- bench ----
bench: deps bench-size

# ---- packaging: cross builds without the SDK, .ipk, sizes (see docs-packaging.md) ----
# Short target names; `make cross-mipsel` builds one. OpenWrt arch names also work for ipk.
CROSS_TARGETS ?= x86_64 aarch64 armv7 mipsel mips
ARCH ?= x86_64

.PHONY: cross ipk apk bench-size

cross:
	openwrt/cross.sh $(CROSS_TARGETS)

cross-%:
	openwrt/cross.sh $*

ipk:
	openwrt/cross.sh $(ARCH)
	openwrt/ipk.sh $(ARCH)

apk:
	@echo "make apk does not exist: no apk v3 reader (apk-tools) could be run here to verify one." >&2
	@echo "Build the .apk with an OpenWrt 25.12 SDK from the feed Makefile (openwrt/Makefile):" >&2
	@echo "see docs-packaging.md, 'Build from the feed'." >&2
	@exit 2

bench-size:
	openwrt/sizes.sh $(CROSS_TARGETS)

clean:
	$(CARGO) clean
	rm -rf dist build
