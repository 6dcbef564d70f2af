#!/bin/sh
# Run by the packages feed's CI (test_entrypoint.sh in openwrt/actions-shared-workflows) on the
# target after installing the package: $1 = package name, $2 = version without the release.
# JELLYDEMON_ROOT (empty on the target) is where the package's files are, for a check off-target.

case "$1" in
jellydemon)
	out=$(jellydemon --version) || { echo "FAIL: jellydemon --version exited $?"; exit 1; }
	[ "$out" = "jellydemon $2" ] || { echo "FAIL: '$out' is not 'jellydemon $2'"; exit 1; }
	# the shipped configuration loads (`config` prints it as `uci show` does)
	jellydemon --config "${JELLYDEMON_ROOT:-}/etc/config/jellydemon" config | grep -qx "jellydemon.main.enabled='0'" ||
		{ echo "FAIL: the shipped /etc/config/jellydemon does not load"; exit 1; }
	;;
esac
