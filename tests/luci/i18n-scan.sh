#!/usr/bin/env bash
# Writes luci-app-jellydemon/po/templates/jellydemon.pot (or prints it with --stdout): every
# string the app translates, in the format of the luci feed's templates (build/i18n-scan.pl in
# openwrt/luci): GNU xgettext per file with LuCI's keywords (_, N_), the "title" and
# "description" of menu.d and acl.d JSON files, locations as applications/<app>/<path>:<line>
# sorted, no xgettext flags, whitespace collapsed, then `msguniq -s` (sorted, wrapped). Needs
# gettext (apt-get install gettext).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
APP=luci-app-jellydemon
OUT=$ROOT/$APP/po/templates/jellydemon.pot
export LC_ALL=C
ERR=$(mktemp)
trap 'rm -f "$ERR"' EXIT

scan() {
	local rel=$1 file=$ROOT/$APP/$1
	case $file in
	*.json) sed -E 's/("(title|description)")[[:space:]]*:[[:space:]]*("([^"\\]|\\.)*")/\1: _(\3)/g' "$file" ;;
	*) cat "$file" ;;
	esac | xgettext --from-code=UTF-8 --no-wrap --language=JavaScript \
		--keyword=_:1 --keyword=_:1,2c --keyword=N_:2,3 --keyword=N_:2,3,4c -o - - 2>"$ERR" |
		sed "s/standard input:/-:/g" |
		awk -v path="applications/$APP/$rel" '
		# locations: one per line, with the file named; the header and flags dropped
		/^#: / { started = 1; n = split($0, f, " "); for (i = 2; i <= n; i++) { sub(/^.*:/, "", f[i]); print "#: " path ":" f[i] } next }
		!started { next }
		/^#, / { next }
		{ print }'
}

files=$(cd "$ROOT/$APP" && find htdocs root -type f \( -name '*.js' -o -path '*/menu.d/*.json' -o -path '*/acl.d/*.json' \) | sort)
pot=$({
	printf 'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8"\n\n'
	for f in $files; do
		scan "$f"
		# a string xgettext could not read would be missing from the template
		if [ -s "$ERR" ]; then echo "$f: $(cat "$ERR")" >&2; exit 1; fi
		echo
	done
} | msguniq -s | awk '
	# locations of one message in file then line order, as i18n-scan.pl sorts them
	function flush() { if (nl) { cmd = "sort -t: -k1,1 -k2,2n"; for (i = 1; i <= nl; i++) print loc[i] | cmd; close(cmd); nl = 0 } }
	/^#: / { loc[++nl] = $0; next }
	{ flush(); print }
	END { flush() }')
if [ "${1:-}" = --stdout ]; then printf '%s\n' "$pot"; else printf '%s\n' "$pot" >"$OUT"; fi
