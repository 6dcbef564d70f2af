#!/usr/bin/env bash
# The release tarball of the feed package, made reproducibly from a tag, and its sha256:
#
#   openwrt/release.sh [--update] [TAG] [OUTDIR]
#
# TAG defaults to v<PKG_VERSION of net/jellydemon/Makefile>, OUTDIR to dist/. Writes
# OUTDIR/jellydemon-<version>.tar.gz (the name and top directory PKG_SOURCE and PKG_BUILD_DIR
# expect) and prints its sha256. With --update, also writes that hash into PKG_HASH.
#
# Reproducible: `git archive` of a commit gives the same tar bytes everywhere (entries in tree
# order, mtime = the commit's time, the commit id in the pax header) and `gzip -n` stores no
# name or time, so anyone can check the hash from the tag alone. The feed Makefile is left out
# of the tarball (.gitattributes: export-ignore), so the hash can be written into it after
# tagging without changing what was tagged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MK=$ROOT/net/jellydemon/Makefile
update=0
if [ "${1:-}" = --update ]; then update=1; shift; fi
version=$(sed -n 's/^PKG_VERSION:=//p' "$MK")
tag=${1:-v$version}
outdir=${2:-$ROOT/dist}
case $tag in v*) version=${tag#v} ;; esac

git -C "$ROOT" rev-parse -q --verify "refs/tags/$tag^{commit}" >/dev/null ||
	{ echo "release: no tag $tag (git tag $tag first)" >&2; exit 1; }
mkdir -p "$outdir"
out=$outdir/jellydemon-$version.tar.gz
git -C "$ROOT" archive --format=tar --prefix="jellydemon-$version/" "$tag" | gzip -9n >"$out.tmp"
mv "$out.tmp" "$out"
hash=$(sha256sum "$out" | cut -d' ' -f1)
printf '%s  %s\n' "$hash" "$out"
if [ "$update" = 1 ]; then
	sed -i "s/^PKG_HASH:=.*/PKG_HASH:=$hash/" "$MK"
	echo "PKG_HASH of $MK set" >&2
fi
