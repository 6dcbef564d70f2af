# jellydemon — developer entry points. `make demo` and `make test` work on a fresh Debian/Ubuntu
# machine as root: they install what they need first.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps test test-rust test-luci test-package demo bench outcome chaos fuzz clean

all: build

build:
	$(CARGO) build --release

# ---- deps: system packages and toolchains the tests need (idempotent) ----
deps:
	tests/deps.sh

# ---- test: everything, as CI runs it ----
test: deps test-rust test-luci test-package

test-rust: deps
	$(CARGO) build --examples
	$(CARGO) test --all-targets --no-fail-fast

# ---- test-luci: lint + browser tests of luci-app-jellydemon (Chromium from apt, npm packages
# pinned by tests/luci/package-lock.json; no browser download) ----
test-luci: deps
	cd tests/luci && npm ci --no-audit --no-fund
	cd tests/luci && npm run lint
	cd tests/luci && npm test

test-package: deps
	tests/package.sh

# ---- demo: the real daemon in an emulated home network ----
# Root is needed for network namespaces. Leftovers of an interrupted earlier run are removed
# first (only namespaces whose creating process is gone).
demo: deps
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root (it builds network namespaces)"; exit 1; }
	$(CARGO) build --release --example homenet
	$(CARGO) build --release
	target/release/examples/homenet down --all
	target/release/examples/homenet demo --daemon target/release/jellydemon

# ---- outcome: control quality, with and without the daemon (README "Control quality") ----
# Every scenario of the matrix is played twice at once in two emulated networks, with and
# without jellydemon; prints the side-by-side table. Fails when a run with the daemon misses a
# control goal. About a minute per scenario.
OUTCOME_SCENARIOS ?= tests/scenarios/demo.json tests/scenarios/remote-viewers-household.json \
	$(sort $(wildcard tests/scenarios/matrix-*.json))

outcome: deps
	@[ "$$(id -u)" = 0 ] || { echo "make outcome needs root (it builds network namespaces)"; exit 1; }
	$(CARGO) build --release --example homenet
	$(CARGO) build --release
	target/release/examples/homenet down --all
	target/release/examples/homenet outcome --daemon target/release/jellydemon $(OUTCOME_SCENARIOS)

# ---- bench: efficiency figures and budgets (DESIGN.md §10; README "Efficiency") ----
# Sizes of all five cross builds and packages (bench-size), then, in the emulated router, tick
# CPU with 65,536 conntrack entries, RSS, reaction times and decide() instruction counts of the
# shipped static x86_64 build. Exits non-zero when a budget does not hold.
bench: deps
	@[ "$$(id -u)" = 0 ] || { echo "make bench needs root (it builds network namespaces)"; exit 1; }
	@command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  apt-get -o DPkg::Lock::Timeout=600 install -y -qq valgrind; }
	status=0; $(MAKE) bench-size || status=1; \
	$(MAKE) ipk ARCH=mipsel_24kc && $(MAKE) ipk ARCH=aarch64_cortex-a53 || status=1; \
	$(CARGO) build --release --example homenet || exit 1; \
	target/release/examples/homenet down --all; \
	c=build/cross; \
	target/release/examples/homenet bench \
	  --daemon $$c/x86_64-unknown-linux-musl/jellydemon \
	  --binary mipsel=$$c/mipsel-unknown-linux-musl/jellydemon \
	  --binary aarch64=$$c/aarch64-unknown-linux-musl/jellydemon \
	  --binary x86_64=$$c/x86_64-unknown-linux-musl/jellydemon \
	  $$(for p in dist/jellydemon_*.ipk; do echo --package $$p; done) || status=1; \
	$(MAKE) outcome || status=1; \
	exit $$status

# ---- chaos: crash consistency (README "Crash consistency") ----
# The daemon in the emulated home network is killed with SIGKILL at random moments while
# viewers come and go and Jellyfin is slow or answers writes after the timeout; each kill is
# followed by `jellydemon restore` or a new start. Fails on any lost original limit.
# CHAOS_KILLS sets the number of kills; JD_CHAOS_SEED repeats a run.
CHAOS_KILLS ?= 120

chaos: deps
	@[ "$$(id -u)" = 0 ] || { echo "make chaos needs root (it builds network namespaces)"; exit 1; }
	$(CARGO) build --examples
	JD_CHAOS_KILLS=$(CHAOS_KILLS) $(CARGO) test --test e2e chaos_kill_9 -- --nocapture

# ---- fuzz: libFuzzer on every parser of outside input (README "Fuzzing") ----
# 10 million executions per target by default; RUNS=… and MAX_TIME=… (seconds per target)
# change that, e.g. `make fuzz RUNS=0 MAX_TIME=600`; FUZZ_TARGETS=… picks targets (uci jellyfin
# tc netlink conntrack). Stable Rust and a C++ compiler suffice.
# `make test` replays the seeds and mutations of them (tests/fuzz_replay.rs).
RUNS ?= 10000000
MAX_TIME ?= 0
fuzz:
	RUNS=$(RUNS) MAX_TIME=$(MAX_TIME) fuzz/run.sh $(FUZZ_TARGETS)

# ---- packaging: cross builds without the SDK, .ipk, sizes (README "Packaging") ----
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
	@echo "Build the .apk with an OpenWrt 25.12 SDK from the feed Makefile (net/jellydemon/Makefile):" >&2
	@echo "see the README, 'Build from the feeds'." >&2
	@exit 2

bench-size:
	openwrt/sizes.sh $(CROSS_TARGETS)

clean:
	$(CARGO) clean
	rm -rf dist build
