#!/usr/bin/env bash
# Builds OpenWrt .ipk packages without the SDK, in the format opkg reads (the layout of
# OpenWrt's scripts/ipkg-build): a gzip TAR (not an ar archive) of ./debian-binary, ./data.tar.gz
# and ./control.tar.gz. Deterministic: sorted entries, owner 0:0, mtimes = SOURCE_DATE_EPOCH
# (default: the last commit's time), gzip -n.
#
#   openwrt/ipk.sh ARCH [OUTDIR]
#
# ARCH is an OpenWrt package architecture (x86_64, aarch64_cortex-a53, arm_cortex-a7_neon-vfpv4,
# mipsel_24kc, mips_24kc, ...). Writes OUTDIR/jellydemon_<ver>_<ARCH>.ipk from the cross-built
# binary (openwrt/cross.sh ARCH must have run) and OUTDIR/luci-app-jellydemon_<ver>_all.ipk from
# luci-app-jellydemon/{htdocs,root}. OUTDIR defaults to dist/.
# Metadata and the installed files come from the feed package (net/jellydemon/Makefile and
# net/jellydemon/files/) and luci-app-jellydemon/Makefile, so the feed build and this one
# describe the same package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCH=${1:?usage: openwrt/ipk.sh ARCH [OUTDIR]}
OUTDIR=${2:-$ROOT/dist}
CROSS_OUT=${JELLYDEMON_CROSS_OUT:-$ROOT/build/cross}
FEED=$ROOT/net/jellydemon
CONFIG=${JELLYDEMON_DEFAULT_CONFIG:-$FEED/files/jellydemon.config}

die() { printf '[ipk] error: %s\n' "$*" >&2; exit 1; }

case $ARCH in
*[!A-Za-z0-9_.+-]* | all) die "bad architecture '$ARCH'" ;;
esac

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
fi
case $SOURCE_DATE_EPOCH in '' | *[!0-9]*) die "SOURCE_DATE_EPOCH must be a number" ;; esac
export SOURCE_DATE_EPOCH

# Value of a simple `NAME:=value` (or ?=) line of a Makefile; empty when absent.
mkvar() {
	sed -n "s/^[[:space:]]*$2[[:space:]]*[:?]\{0,1\}=[[:space:]]*//p" "$1" | head -n 1
}

# Body of a `define NAME ... endef` block.
mkdefine() {
	awk -v name="$2" '$0 == "define " name { on = 1; next } on && $0 == "endef" { exit } on' "$1"
}

# OpenWrt DEPENDS to control Depends: +pkg -> pkg, @cond and $(VARS) dropped, comma-separated.
depends_of() {
	local out="" w
	for w in $1; do
		case $w in
		+*) w=${w#+} ;;
		@* | \$\(* | *\)) continue ;;
		esac
		case $w in *[!A-Za-z0-9_.+-]*) continue ;; esac
		out="${out:+$out, }$w"
	done
	printf '%s' "$out"
}

TAR_OPTS=(--format=gnu --numeric-owner --owner=0 --group=0 --sort=name
	--mtime="@$SOURCE_DATE_EPOCH")

# pack PKGDIR NAME VERSION ARCH: PKGDIR holds data/ and control/ (with a control file whose
# Installed-Size is filled in here, like ipkg-build does).
pack() {
	local dir=$1 name=$2 version=$3 arch=$4
	local size
	# Directories get 0755, so a restrictive umask on the build machine cannot leak into them.
	find "$dir/data" "$dir/control" -type d -exec chmod 0755 {} +
	tar "${TAR_OPTS[@]}" -C "$dir/data" -cf - . | gzip -9n >"$dir/data.tar.gz"
	size=$(gzip -dc "$dir/data.tar.gz" | wc -c)
	sed -i "s/^Installed-Size: .*/Installed-Size: $size/" "$dir/control/control"
	tar "${TAR_OPTS[@]}" -C "$dir/control" -cf - . | gzip -9n >"$dir/control.tar.gz"
	printf '2.0\n' >"$dir/debian-binary"
	touch -d "@$SOURCE_DATE_EPOCH" "$dir/debian-binary" "$dir/data.tar.gz" "$dir/control.tar.gz"
	chmod 0644 "$dir/debian-binary" "$dir/data.tar.gz" "$dir/control.tar.gz"
	local out="$OUTDIR/${name}_${version}_${arch}.ipk"
	tar "${TAR_OPTS[@]}" -C "$dir" -cf - ./debian-binary ./data.tar.gz ./control.tar.gz |
		gzip -9n >"$out.tmp"
	mv "$out.tmp" "$out"
	printf '%s\n' "$out"
}

# The wrappers OpenWrt generates for every package: run /lib/functions.sh's defaults, which
# run the package's own postinst-pkg/prerm-pkg, enable and start (or stop and disable) its init
# scripts and apply its uci-defaults.
write_scripts() {
	cat >"$1/postinst" <<'EOF'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
EOF
	cat >"$1/prerm" <<'EOF'
#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
EOF
	chmod 0755 "$1/postinst" "$1/prerm"
}

description_lines() {
	# first line after "Description:", the rest indented by one space (control file syntax)
	awk 'NF { sub(/^[ \t]+/, ""); if (n++ == 0) print "Description:  " $0; else print " " $0 }'
}

build_daemon() {
	local mk=$FEED/Makefile
	local name version release license license_files maintainer section depends triple bin
	name=$(mkvar "$mk" PKG_NAME)
	version=$(mkvar "$mk" PKG_VERSION)
	release=$(mkvar "$mk" PKG_RELEASE)
	license=$(mkvar "$mk" PKG_LICENSE)
	license_files=$(mkvar "$mk" PKG_LICENSE_FILES)
	maintainer=$(mkvar "$mk" PKG_MAINTAINER)
	section=$(mkdefine "$mk" "Package/$name" | sed -n 's/^[[:space:]]*SECTION:=//p')
	depends=$(depends_of "$(mkdefine "$mk" "Package/$name" | sed -n 's/^[[:space:]]*DEPENDS:=//p')")
	local cargo_version
	cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
	[ "$version" = "$cargo_version" ] ||
		die "net/jellydemon/Makefile PKG_VERSION ($version) differs from Cargo.toml ($cargo_version)"
	triple=$("$ROOT/openwrt/cross.sh" triple "$ARCH") || exit 1
	bin=$CROSS_OUT/$triple/jellydemon
	[ -f "$bin" ] || die "no $bin: run 'make cross-$ARCH' (openwrt/cross.sh $ARCH) first"
	[ -f "$CONFIG" ] || die "no default configuration at $CONFIG"

	local dir=$WORK/$name
	mkdir -p "$dir/data/usr/sbin" "$dir/data/etc/init.d" "$dir/data/etc/config" \
		"$dir/data/lib/upgrade/keep.d" "$dir/control"
	# the same files and modes as Package/jellydemon/install (INSTALL_BIN 0755, INSTALL_CONF
	# 0600, INSTALL_DATA 0644)
	install -m 0755 "$bin" "$dir/data/usr/sbin/jellydemon"
	install -m 0755 "$FEED/files/jellydemon.init" "$dir/data/etc/init.d/jellydemon"
	install -m 0600 "$CONFIG" "$dir/data/etc/config/jellydemon"
	install -m 0600 "$FEED/files/jellydemon_secrets.config" "$dir/data/etc/config/jellydemon_secrets"
	install -m 0644 "$FEED/files/jellydemon.upgrade" "$dir/data/lib/upgrade/keep.d/jellydemon"
	# libc: every OpenWrt package depends on it (the binary here is static, so it is harmless).
	{
		printf 'Package: %s\n' "$name"
		printf 'Version: %s-%s\n' "$version" "$release"
		printf 'Depends: %s\n' "libc${depends:+, $depends}"
		printf 'Source: feeds/packages/net/jellydemon\n'
		printf 'SourceName: %s\n' "$name"
		printf 'License: %s\n' "$license"
		[ -z "$license_files" ] || printf 'LicenseFiles: %s\n' "$license_files"
		printf 'Section: %s\n' "${section:-net}"
		printf 'SourceDateEpoch: %s\n' "$SOURCE_DATE_EPOCH"
		printf 'Maintainer: %s\n' "$maintainer"
		printf 'Architecture: %s\n' "$ARCH"
		printf 'Installed-Size: 0\n'
		mkdefine "$mk" "Package/$name/description" | description_lines
	} >"$dir/control/control"
	mkdefine "$mk" "Package/$name/conffiles" | sed '/^[[:space:]]*$/d' >"$dir/control/conffiles"
	write_scripts "$dir/control"
	chmod 0644 "$dir/control/control" "$dir/control/conffiles"
	pack "$dir" "$name" "$version-$release" "$ARCH"
}

build_luci() {
	local src=${JELLYDEMON_LUCI_DIR:-$ROOT/luci-app-jellydemon}
	local mk=$src/Makefile
	local name=luci-app-jellydemon version=0.1.0 release=1 license=GPL-2.0-only
	local maintainer="" title="LuCI support for jellydemon" descr="" depends="+luci-base +jellydemon"
	if [ -f "$mk" ]; then
		version=$(mkvar "$mk" PKG_VERSION); version=${version:-0.1.0}
		release=$(mkvar "$mk" PKG_RELEASE); release=${release:-1}
		license=$(mkvar "$mk" PKG_LICENSE); license=${license:-GPL-2.0-only}
		maintainer=$(mkvar "$mk" PKG_MAINTAINER)
		title=$(mkvar "$mk" LUCI_TITLE); title=${title:-LuCI support for jellydemon}
		descr=$(mkvar "$mk" LUCI_DESCRIPTION)
		local d
		d=$(mkvar "$mk" LUCI_DEPENDS)
		depends=${d:-$depends}
	fi
	local dir=$WORK/$name
	mkdir -p "$dir/data" "$dir/control"
	# luci.mk: htdocs/* goes to /www, root/* to /
	if [ -d "$src/htdocs" ]; then
		mkdir -p "$dir/data/www"
		cp -R "$src/htdocs/." "$dir/data/www/"
	fi
	[ -d "$src/root" ] && cp -R "$src/root/." "$dir/data/"
	# Modes as the SDK's install would give them: data 0644, directories 0755; executables
	# (rpcd plugins, uci-defaults run by sourcing need no x bit) keep 0755.
	find "$dir/data" -type f -exec sh -c 'for f; do if [ -x "$f" ]; then chmod 0755 "$f"; else chmod 0644 "$f"; fi; done' sh {} +
	{
		printf 'Package: %s\n' "$name"
		printf 'Version: %s-%s\n' "$version" "$release"
		printf 'Depends: %s\n' "libc, $(depends_of "$depends")"
		printf 'Source: feeds/luci/applications/luci-app-jellydemon\n'
		printf 'SourceName: %s\n' "$name"
		printf 'License: %s\n' "$license"
		printf 'Section: luci\n'
		printf 'SourceDateEpoch: %s\n' "$SOURCE_DATE_EPOCH"
		printf 'Maintainer: %s\n' "${maintainer:-jellydemon maintainers}"
		printf 'Architecture: all\n'
		printf 'Installed-Size: 0\n'
		printf '%s\n' "$title" "$descr" | description_lines
	} >"$dir/control/control"
	write_scripts "$dir/control"
	# luci.mk's package postinst: drop LuCI's caches and make rpcd re-read the ACLs.
	cat >"$dir/control/postinst-pkg" <<'EOF'
[ -n "${IPKG_INSTROOT}" ] || {
	rm -f /tmp/luci-indexcache.*
	rm -rf /tmp/luci-modulecache/
	killall -HUP rpcd 2>/dev/null
	exit 0
}
EOF
	chmod 0644 "$dir/control/control"
	chmod 0755 "$dir/control/postinst-pkg"
	pack "$dir" "$name" "$version-$release" all
}

mkdir -p "$OUTDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jellydemon-ipk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
umask 022
build_daemon
build_luci
