#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian-like machine (as root).
# Idempotent: it installs only what is missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have nft || need+=(nftables)
have conntrack || need+=(conntrack)
# homenet (the emulated home network): sysctl inside the namespaces.
have sysctl || need+=(procps)
# ---- LuCI browser tests (make test-luci): Debian's Chromium, node and npm ----
have chromium || need+=(chromium)
have node || need+=(nodejs)
have npm || need+=(npm)
# LuCI translation template check (tests/luci/i18n-scan.sh): xgettext and msguniq
have xgettext || need+=(gettext)
# packaging tests (tests/package.sh); cross compilers and qemu come from openwrt/cross.sh
have shellcheck || need+=(shellcheck)
have busybox || need+=(busybox)
have file || need+=(file)
# publish tests: an https webhook through curl to a receiver with its own CA (openssl)
have curl || need+=(curl)
have openssl || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}"
fi

# ---- publish tests: the reference Prometheus text parser (PyPI prometheus_client) ----
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  if ! have python3 || ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3 python3-pip
  fi
  # Debian's own python refuses a plain pip install (PEP 668); a pyenv one accepts it.
  python3 -m pip install -q prometheus_client 2>/dev/null \
    || python3 -m pip install -q --break-system-packages prometheus_client
fi
