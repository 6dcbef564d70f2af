#!/usr/bin/env bash
# Cross builds of jellydemon for router CPUs without the OpenWrt SDK: static musl binaries,
# stripped, built with the release profile of Cargo.toml (opt z, LTO, codegen-units 1, abort).
#
#   openwrt/cross.sh [--setup-only] TARGET...
#   JELLYDEMON_EXTRA_RUSTFLAGS="-C llvm-args=..." openwrt/cross.sh mipsel   (extra flags, to measure)
#
# TARGET is a short name (x86_64 aarch64 armv7 mipsel mips), a Rust triple, or an OpenWrt
# package architecture (mipsel_24kc, aarch64_cortex-a53, arm_cortex-a7_neon-vfpv4, ...).
# Results: build/cross/<triple>/jellydemon. The script installs what it needs (Debian cross gcc,
# qemu-user-static, Rust targets and rust-src) and caches everything slow (a soft-float musl per
# CPU, the cargo target directory with the rebuilt std) under $JELLYDEMON_CACHE, by default
# ~/.cache/jellydemon, so a second run only recompiles what changed.
#
# Every target rebuilds std with the release profile (-Z build-std with RUSTC_BOOTSTRAP=1 on
# the stable toolchain), which the tier-3 targets (mips, mipsel) need anyway and which makes
# all binaries smaller. mips, mipsel and armv7 link against a musl built here from Debian's
# musl source with Debian's cross gcc: Debian ships no soft-float musl and no big-endian mips
# port at all (and rustup has no armv7 musl std to take one from).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${JELLYDEMON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jellydemon}
OUT=${JELLYDEMON_CROSS_OUT:-$ROOT/build/cross}
CARGO=${CARGO:-cargo}

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] error: %s\n' "$*" >&2; exit 1; }

# Sets TRIPLE GNU OWN_MUSL SOFT QEMU for one target name; fails on an unknown name.
# OWN_MUSL=1: no prebuilt Rust std (or none usable here) exists for the target, so it links
# against a musl built here.
describe() {
	GNU="" OWN_MUSL=0 SOFT="" QEMU=""
	case $1 in
	x86_64 | x86_64-unknown-linux-musl)
		TRIPLE=x86_64-unknown-linux-musl QEMU=qemu-x86_64-static ;;
	aarch64 | aarch64_* | aarch64-unknown-linux-musl)
		TRIPLE=aarch64-unknown-linux-musl GNU=aarch64-linux-gnu QEMU=qemu-aarch64-static ;;
	armv7 | arm_cortex-a*_neon* | arm_cortex-a*_vfp* | armv7-unknown-linux-musleabihf)
		TRIPLE=armv7-unknown-linux-musleabihf GNU=arm-linux-gnueabihf OWN_MUSL=1
		QEMU=qemu-arm-static ;;
	mipsel | mipsel_* | mipsel-unknown-linux-musl)
		TRIPLE=mipsel-unknown-linux-musl GNU=mipsel-linux-gnu OWN_MUSL=1 SOFT=-msoft-float
		QEMU=qemu-mipsel-static ;;
	mips | mips_* | mips-unknown-linux-musl)
		TRIPLE=mips-unknown-linux-musl GNU=mips-linux-gnu OWN_MUSL=1 SOFT=-msoft-float
		QEMU=qemu-mips-static ;;
	*)
		die "unknown target '$1' (known: x86_64 aarch64 armv7 mipsel mips, or an OpenWrt arch such as mipsel_24kc; ARM without an FPU and other CPUs need the OpenWrt SDK)" ;;
	esac
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

apt_install() {
	local missing=() p
	for p in "$@"; do have_pkg "$p" || missing+=("$p"); done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "please install: apt-get install ${missing[*]}"
	log "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null ||
		{ apt-get -o DPkg::Lock::Timeout=600 update -qq &&
			apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null; }
}

# Debian's musl source package, fetched once through a private apt configuration that adds
# deb-src entries for the machine's own Debian suites (the system's apt setup stays untouched).
musl_source() {
	local src=$CACHE/src
	local dir
	dir=$(find "$src" -maxdepth 1 -type d -name 'musl-*' 2>/dev/null | sort | tail -n 1)
	if [ -n "$dir" ] && [ -f "$dir/configure" ]; then
		printf '%s\n' "$dir"
		return 0
	fi
	apt_install dpkg-dev
	local apt=$CACHE/apt
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$src"
	: >"$apt/sources.list"
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -n 's/^deb \(.*debian.*\)$/deb-src \1/p' "$f" >>"$apt/sources.list"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'BEGIN { RS=""; ORS="\n\n" } /debian/ && /Types:[^\n]*deb/ {
			sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f" >>"$apt/src.sources"
	done
	local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
	mkdir -p "$apt/parts"
	[ -f "$apt/src.sources" ] && mv "$apt/src.sources" "$apt/parts/src.sources"
	log "fetching Debian's musl source package"
	apt-get "${opts[@]}" update -qq >&2
	(cd "$src" && apt-get "${opts[@]}" source -qq musl >&2)
	dir=$(find "$src" -maxdepth 1 -type d -name 'musl-*' | sort | tail -n 1)
	if [ -z "$dir" ] || [ ! -f "$dir/configure" ]; then die "no musl source unpacked in $src"; fi
	printf '%s\n' "$dir"
}

# A static soft-float (mips) or hard-float (armhf) musl for one GNU triple, plus the
# _dl_find_object stub: Debian's libgcc_eh.a refers to that glibc symbol; returning -1 makes the
# unwinder fall back to dl_iterate_phdr.
build_musl() {
	local sysroot=$CACHE/musl/$GNU
	local stamp="$sysroot/.built ${SOFT:-hard}"
	if [ -f "$sysroot/lib/libc.a" ] && [ -f "$sysroot/lib/dlfo_stub.o" ] && [ -f "${stamp% *}" ]; then
		return 0
	fi
	local src
	src=$(musl_source)
	local bdir=$CACHE/musl-build/$GNU
	rm -rf "$bdir" "$sysroot"
	mkdir -p "$bdir"
	log "building musl for $GNU ${SOFT:-}"
	(
		cd "$bdir"
		CC="$GNU-gcc${SOFT:+ $SOFT}" CFLAGS="-Os -ffunction-sections -fdata-sections" \
			"$src/configure" --target="$GNU" --disable-shared --prefix="$sysroot"
		make -s -j"$(nproc)"
		make -s install
	) >"$CACHE/musl-build/$GNU.log" 2>&1 || {
		tail -n 30 "$CACHE/musl-build/$GNU.log" >&2
		die "musl build for $GNU failed (log: $CACHE/musl-build/$GNU.log)"
	}
	printf 'int _dl_find_object(void *pc, void *result) { (void)pc; (void)result; return -1; }\n' \
		>"$bdir/dlfo_stub.c"
	# shellcheck disable=SC2086 # SOFT is one flag or nothing
	"$GNU-gcc" $SOFT -Os -c "$bdir/dlfo_stub.c" -o "$sysroot/lib/dlfo_stub.o"
	: >"${stamp% *}"
}

setup() {
	local pkgs=(qemu-user-static file) t
	for t in "$@"; do
		describe "$t"
		[ -n "$GNU" ] && pkgs+=("gcc-$GNU")
		[ "$OWN_MUSL" = 1 ] && pkgs+=(dpkg-dev)
		[ "$TRIPLE" = x86_64-unknown-linux-musl ] && pkgs+=(gcc)
	done
	apt_install "${pkgs[@]}"
	rustup component list --installed 2>/dev/null | grep -q '^rust-src' ||
		rustup component add rust-src >&2
	for t in "$@"; do
		describe "$t"
		if [ "$OWN_MUSL" = 1 ]; then
			build_musl
		else
			# its self-contained musl (crt objects, libc.a) is what the build links against
			rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE" ||
				rustup target add "$TRIPLE" >&2
		fi
	done
}

build() {
	describe "$1"
	local env_triple
	env_triple=$(printf '%s' "$TRIPLE" | tr 'a-z-' 'A-Z_')
	# No unwind tables: with panic=abort nothing unwinds, and a stripped binary's backtrace is
	# only addresses anyway. Saves about 10%. Derived Debug output is shallow (no message the
	# daemon prints uses it; not `none`, which also empties `{:?}` and so the HTTP version in
	# ureq's request line). Panics abort at once, without a message (-C panic=immediate-abort: input never
	# panics by design; a bug still ends the process, procd logs the crash and respawns it, and
	# the next start restores the users' limits), so no trap needs to follow a call that cannot
	# return (-Z trap-unreachable=no): about 25% more, which is what brings the binary under
	# its budget.
	local rustflags="-C target-feature=+crt-static -C force-unwind-tables=no -Z location-detail=none -Z fmt-debug=shallow -Z trap-unreachable=no -Z unstable-options -C panic=immediate-abort"
	# No RELRO: in a static executable it only write-protects a few hundred bytes of GOT after
	# start, and it costs a page-aligned gap in the file before the data segment: up to the
	# target's maximum page size, 64 KB on mips and aarch64 (42 KB of the mipsel binary).
	rustflags="$rustflags -C link-arg=-Wl,-z,norelro"
	# MIPS position-independent code goes through the GOT for every global: a static
	# executable does not need it, and non-PIC code is about 11% smaller.
	# No trap after each division for a zero divisor: Rust checks every divisor itself before
	# dividing, so the trap could never fire (about 70 instructions).
	case $TRIPLE in mips*) rustflags="$rustflags -C relocation-model=static -C llvm-args=-mno-check-zero-division" ;; esac
	# For measuring other code generation options (docs/packaging.md, Sizes); empty for the shipped build.
	rustflags="$rustflags ${JELLYDEMON_EXTRA_RUSTFLAGS:-}"
	local -a env=("CARGO_TARGET_${env_triple}_RUSTFLAGS=$rustflags")
	# One target directory per checkout: cargo does not re-copy a fresh binary to release/, so
	# two checkouts sharing one would pick up each other's.
	local key
	key=$(printf '%s' "$ROOT" | sha256sum | cut -c1-16)
	local tdir=$CACHE/target/$key
	# Every target rebuilds std (-Z build-std, allowed on stable by RUSTC_BOOTSTRAP=1): with
	# the release profile applied to std too, and its optimize_for_size feature, binaries are
	# about 30% smaller than with the prebuilt std (aarch64: 1315 KB -> 919 KB).
	local -a args=(build --release --locked --bin jellydemon --target "$TRIPLE"
		--target-dir "$tdir" -Z "build-std=std,panic_abort" -Z build-std-features=optimize_for_size)
	env+=(RUSTC_BOOTSTRAP=1)
	if [ "$OWN_MUSL" = 1 ]; then
		local sysroot=$CACHE/musl/$GNU
		local gccdir
		gccdir=$(dirname "$("$GNU-gcc" -print-libgcc-file-name)")
		env+=("CARGO_TARGET_${env_triple}_LINKER=$ROOT/openwrt/musl-gcc.sh"
			"JELLYDEMON_LD_CC=$GNU-gcc"
			"JELLYDEMON_LD_CFLAGS=$SOFT"
			"JELLYDEMON_LD_SYSROOT=$sysroot"
			"JELLYDEMON_LD_GCCDIR=$gccdir")
	elif [ -n "$GNU" ]; then
		env+=("CARGO_TARGET_${env_triple}_LINKER=$GNU-gcc")
	fi
	log "building $TRIPLE"
	(cd "$ROOT" && env "${env[@]}" "$CARGO" "${args[@]}")
	local bin=$tdir/$TRIPLE/release/jellydemon
	[ -f "$bin" ] || die "cargo left no binary at $bin"
	mkdir -p "$OUT/$TRIPLE"
	cp "$bin" "$OUT/$TRIPLE/jellydemon.tmp"
	mv "$OUT/$TRIPLE/jellydemon.tmp" "$OUT/$TRIPLE/jellydemon"
	log "$OUT/$TRIPLE/jellydemon: $(stat -c %s "$OUT/$TRIPLE/jellydemon") bytes"
}

main() {
	local setup_only=0
	if [ "${1:-}" = --setup-only ]; then setup_only=1; shift; fi
	[ $# -gt 0 ] || die "usage: $0 [--setup-only] TARGET... (x86_64 aarch64 armv7 mipsel mips)"
	local t
	for t in "$@"; do describe "$t"; done
	# one setup at a time: two runs must not build the same musl into the same directory
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	flock 9
	setup "$@"
	flock -u 9
	[ "$setup_only" = 1 ] && return 0
	for t in "$@"; do build "$t"; done
}

# `triple NAME` prints the Rust triple of a target name (used by the Makefile and the tests).
if [ "${1:-}" = triple ]; then
	describe "${2:-}"
	printf '%s\n' "$TRIPLE"
	exit 0
fi
if [ "${1:-}" = qemu ]; then
	describe "${2:-}"
	printf '%s\n' "$QEMU"
	exit 0
fi
main "$@"
