#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian-like machine (as root).
# Idempotent: it installs only what is missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have nft || need+=(nftables)
have conntrack || need+=(conntrack)
# packaging tests (tests/package.sh); cross compilers and qemu come from openwrt/cross.sh
have shellcheck || need+=(shellcheck)
have busybox || need+=(busybox)
have file || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}"
fi
