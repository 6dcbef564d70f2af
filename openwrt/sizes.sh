#!/usr/bin/env bash
# Size part of `make bench`: cross-builds TARGET... (openwrt/cross.sh), packages each as .ipk and
# prints the stripped binary and the package size against the budgets of the design
# (binary <= 1,000 KB on mips/mipsel, <= 900 KB on aarch64, package <= 450 KB; 1 KB = 1000
# bytes here).
# Exits 1 when a budget is exceeded.
#
#   openwrt/sizes.sh TARGET...      (x86_64 aarch64 armv7 mipsel mips)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CROSS_OUT=${JELLYDEMON_CROSS_OUT:-$ROOT/build/cross}
DIST=$ROOT/build/bench-dist
MIPS_BIN_BUDGET=1000000
BIN_BUDGET=900000
PKG_BUDGET=450000

[ $# -gt 0 ] || set -- x86_64 aarch64 armv7 mipsel mips
"$ROOT/openwrt/cross.sh" "$@"

arch_of() {
	case $1 in
	x86_64) echo x86_64 ;; aarch64) echo aarch64_cortex-a53 ;;
	armv7) echo arm_cortex-a7_neon-vfpv4 ;; mipsel) echo mipsel_24kc ;; mips) echo mips_24kc ;;
	*) echo "$1" ;;
	esac
}
kb() { awk -v b="$1" 'BEGIN { printf "%.1f KB", b / 1000 }'; }

config=${JELLYDEMON_DEFAULT_CONFIG:-$ROOT/net/jellydemon/files/jellydemon.config}
over=0
printf '%-26s %-34s %12s %-12s %12s %-12s\n' "OpenWrt arch" "Rust target" "binary" "(budget)" \
	"ipk" "(<=450 KB)"
for t in "$@"; do
	arch=$(arch_of "$t")
	triple=$("$ROOT/openwrt/cross.sh" triple "$t")
	bin=$CROSS_OUT/$triple/jellydemon
	bsize=$(stat -c %s "$bin")
	bverdict="-"
	budget=""
	case $triple in
	mips-* | mipsel-*) budget=$MIPS_BIN_BUDGET ;;
	aarch64-*) budget=$BIN_BUDGET ;;
	esac
	if [ -n "$budget" ]; then
		if [ "$bsize" -le "$budget" ]; then bverdict=ok; else bverdict=OVER; over=1; fi
	fi
	psize="" pverdict="n/a"
	if [ -f "$config" ] && made=$("$ROOT/openwrt/ipk.sh" "$arch" "$DIST"); then
		psize=$(stat -c %s "$(printf '%s\n' "$made" | head -n 1)")
		if [ "$psize" -le "$PKG_BUDGET" ]; then pverdict=ok; else pverdict=OVER; over=1; fi
	fi
	printf '%-26s %-34s %12s %-12s %12s %-12s\n' "$arch" "$triple" "$(kb "$bsize")" "$bverdict" \
		"${psize:+$(kb "$psize")}" "$pverdict"
done
luci=$(find "$DIST" -name 'luci-app-jellydemon_*_all.ipk' 2>/dev/null | head -n 1)
[ -n "$luci" ] && printf '%-26s %-34s %12s %-12s %12s\n' all luci-app-jellydemon "" "" \
	"$(kb "$(stat -c %s "$luci")")"
[ -f "$config" ] || echo "(no net/jellydemon/files/jellydemon.config: packages not built)"
if [ "$over" = 1 ]; then
	echo "size budget exceeded" >&2
	exit 1
fi
