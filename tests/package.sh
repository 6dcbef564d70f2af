#!/usr/bin/env bash
# Many strings here are literal shell or make text to look for, never to expand.
# shellcheck disable=SC2016
# Package tests (`make test-package`): shellcheck of the shipped and build scripts; the init
# script against a mock of procd; cross builds smoke-tested under qemu-user; the .ipk files
# unpacked with plain tar and checked field by field.
#
# JELLYDEMON_TEST_TARGETS picks the cross builds (default: x86_64 mipsel, one tier-2 and one
# std-rebuilding tier-3 target, to keep `make test` short; `make cross` builds all five).
# Prints one line per check and ends with "N passed, N failed, N skipped".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=${JELLYDEMON_TEST_TARGETS:-x86_64 mipsel}
CROSS_OUT=${JELLYDEMON_CROSS_OUT:-$ROOT/build/cross}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/jellydemon-pkgtest.$$.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	rm -rf "$TMP"
}
trap cleanup EXIT

PASS=0 FAIL=0 SKIP=0
pass() { PASS=$((PASS + 1)); printf 'ok    %s\n' "$1"; }
fail() { FAIL=$((FAIL + 1)); printf 'FAIL  %s\n' "$1"; [ -n "${2:-}" ] && printf '      %s\n' "$2"; }
skip() { SKIP=$((SKIP + 1)); printf 'skip  %s (%s)\n' "$1" "$2"; }
# check NAME COMMAND...: passes when COMMAND succeeds
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(printf '%s' "$out" | head -c 2000)"; fi
}
eq() { [ "$1" = "$2" ] || { printf 'expected [%s]\n     got [%s]\n' "$2" "$1"; return 1; }; }
contains() { case $1 in *"$2"*) return 0 ;; esac; printf 'no [%s] in:\n%s\n' "$2" "$1"; return 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)

# ---------------------------------------------------------------------------------------------
# static analysis of every shell script we ship or run
# ---------------------------------------------------------------------------------------------
command -v shellcheck >/dev/null || { echo "shellcheck missing: run tests/deps.sh" >&2; exit 1; }
FEED=$ROOT/net/jellydemon
for f in net/jellydemon/files/jellydemon.init openwrt/cross.sh openwrt/musl-gcc.sh \
	openwrt/ipk.sh openwrt/sizes.sh openwrt/release.sh tests/package.sh tests/luci/i18n-scan.sh; do
	check "shellcheck $f" shellcheck -x "$ROOT/$f"
done
# run with `sh test.sh NAME VERSION` on the target (busybox ash) by the feed's CI
check "shellcheck net/jellydemon/test.sh" shellcheck -s sh "$FEED/test.sh"

# a world for the Jellyfin emulator and a config for the daemon (dry run: it changes nothing)
API_KEY=4f1c2a9e8b7d6c5e4f3a2b1c0d9e8f7a
EMU_VERSION=10.11.4
write_world() {
	cat >"$TMP/world.json" <<EOF
{ "version": "$EMU_VERSION",
  "api_keys": [ { "name": "jellydemon", "token": "$API_KEY" } ],
  "users": [ { "name": "alice", "id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9" } ],
  "items": [ { "id": "1f2e3d4c5b6a79880796a5b4c3d2e1f0", "name": "Smoke Test", "bitrate": 4000000 } ] }
EOF
}
# write_config URL DIR: a config for the daemon (dry run: it changes nothing) in DIR/jellydemon,
# its secrets in DIR/jellydemon_secrets, state and runtime directories below DIR
write_config() {
	mkdir -p "$2/state" "$2/run"
	cat >"$2/jellydemon" <<EOF
config jellydemon 'main'
	option enabled '1'
	option interval '1'
	option dry_run '1'
	option state_dir '$2/state'
	option run_dir '$2/run'

config jellyfin 'jellyfin'
	option url '$1'

config network 'network'
	option wan_device 'lo'
	option lan_device 'lo'

config bandwidth 'bandwidth'
	option upload_mbps '20'

config shaping 'shaping'
	option enabled '0'
EOF
	printf "config jellyfin 'jellyfin'\n\toption api_key '%s'\n" "$API_KEY" >"$2/jellydemon_secrets"
	chmod 600 "$2/jellydemon_secrets"
}

# ---------------------------------------------------------------------------------------------
# init script against a mock of procd. procd/ubus/rc.common cannot run here, so the functions
# rc.common and /lib/functions.sh provide are stubbed: each records its arguments, one line per
# call with fields separated by '|', in $CALLS. The script runs under busybox ash (OpenWrt's
# shell) when available, else dash.
#
# With PROCD_DIR set, the stubs also model what procd does with a service (a STAND-IN for procd,
# written from its source, openwrt/procd 2c1834a, and from rc.common/procd.sh in openwrt/openwrt):
# - rc.common (USE_PROCD): `start` = procd_open_service; start_service; procd_close_service, and
#   procd_close_service runs service_triggers, then `ubus call service set`; `reload` runs
#   reload_service when the script defines one, else `start`.
# - `service set` (service/service.c service_update -> instance_update in service/instance.c):
#   an instance that is not running is started; a running one whose config changed
#   (instance_config_changed: the command, or the md5 of any `file`, computed by
#   instance_file_update, or reload_signal) gets instance_restart, which with a reload_signal
#   is kill(pid, reload_signal) and nothing else; an unchanged one is left alone; an instance
#   not in the new set is stopped (SIGTERM).
# - procd_send_signal NAME INSTANCE SIG (`ubus call service signal`): kill(pid, SIG).
# Every signal the model delivers is also written to $PROCD_DIR/signals, one line each.
# ---------------------------------------------------------------------------------------------
INIT_SH=(dash)
command -v busybox >/dev/null && INIT_SH=(busybox sh)
cat >"$TMP/mock.sh" <<'EOF'
rec() { local IFS='|'; printf '%s\n' "$*" >>"$CALLS"; }
config_load() { rec config_load "$@"; }
# like /lib/functions.sh: the value of MOCK_<section>_<option>, else the default
config_get() {
	local _v
	eval "_v=\${MOCK_${2}_${3}-\$4}"
	eval "$1=\$_v"
}
# like /lib/functions.sh: 1|on|true|yes|enabled -> 1, 0|off|false|no|disabled -> 0, else default
config_get_bool() {
	local _v
	eval "_v=\${MOCK_${2}_${3}-}"
	case "$_v" in
	1 | on | true | yes | enabled) _v=1 ;;
	0 | off | false | no | disabled) _v=0 ;;
	*) _v=$4 ;;
	esac
	eval "$1=\$_v"
}
pd() { [ -n "${PROCD_DIR:-}" ]; }
pd_signal() {
	local pid
	pid=$(cat "$PROCD_DIR/cur.$1.pid" 2>/dev/null) || return 0
	kill -"$2" "$pid" 2>/dev/null || return 0
	printf '%s\n' "$2" >>"$PROCD_DIR/signals"
}
procd_open_service() { rec procd_open_service "$@"; if pd; then : >"$PROCD_DIR/new.instances"; fi; }
procd_open_instance() {
	rec procd_open_instance "$@"
	pd || return 0
	PD_INST=$1
	: >"$PROCD_DIR/new.$1.cmd"
	: >"$PROCD_DIR/new.$1.file"
	: >"$PROCD_DIR/new.$1.sig"
}
procd_set_param() {
	rec procd_set_param "$@"
	pd || return 0
	local type=$1 f
	shift
	case $type in
	command) printf '%s\n' "$@" >"$PROCD_DIR/new.$PD_INST.cmd" ;;
	# instance_file_update: the md5 of the file's content; all zero when it cannot be opened
	file) for f in "$@"; do
		printf '%s %s\n' "$(md5sum <"$f" 2>/dev/null | cut -d' ' -f1)" "$f"
	done >"$PROCD_DIR/new.$PD_INST.file" ;;
	reload_signal) printf '%s\n' "$1" >"$PROCD_DIR/new.$PD_INST.sig" ;;
	esac
}
procd_close_instance() { rec procd_close_instance "$@"; if pd; then printf '%s\n' "$PD_INST" >>"$PROCD_DIR/new.instances"; fi; }
procd_close_service() {
	rec procd_close_service "$@"
	service_triggers
	pd || return 0
	local i pid x changed
	for i in $(cat "$PROCD_DIR/new.instances"); do
		pid=$(cat "$PROCD_DIR/cur.$i.pid" 2>/dev/null)
		if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
			set --
			while IFS= read -r x; do set -- "$@" "$x"; done <"$PROCD_DIR/new.$i.cmd"
			"$@" >>"$PROCD_DIR/daemon.log" 2>&1 &
			printf '%s\n' "$!" >"$PROCD_DIR/cur.$i.pid"
		else
			changed=0
			for x in cmd file sig; do
				cmp -s "$PROCD_DIR/new.$i.$x" "$PROCD_DIR/cur.$i.$x" || changed=1
			done
			if [ "$changed" = 1 ]; then
				if [ -s "$PROCD_DIR/new.$i.sig" ]; then
					pd_signal "$i" "$(cat "$PROCD_DIR/new.$i.sig")"
				else
					pd_signal "$i" TERM
					rm -f "$PROCD_DIR/cur.$i.pid"
				fi
			fi
		fi
		for x in cmd file sig; do mv "$PROCD_DIR/new.$i.$x" "$PROCD_DIR/cur.$i.$x"; done
	done
	for x in "$PROCD_DIR"/cur.*.pid; do
		[ -f "$x" ] || continue
		i=${x#"$PROCD_DIR"/cur.}
		i=${i%.pid}
		grep -qx "$i" "$PROCD_DIR/new.instances" || { pd_signal "$i" TERM; rm -f "$x"; }
	done
}
procd_open_trigger() { rec procd_open_trigger "$@"; }
procd_close_trigger() { rec procd_close_trigger "$@"; }
procd_add_reload_trigger() { rec procd_add_reload_trigger "$@"; }
procd_add_interface_trigger() { rec procd_add_interface_trigger "$@"; }
procd_add_reload_interface_trigger() { rec procd_add_reload_interface_trigger "$@"; }
procd_send_signal() {
	rec procd_send_signal "$@"
	pd || return 0
	local x i
	for x in "$PROCD_DIR"/cur.*.pid; do
		[ -f "$x" ] || continue
		i=${x#"$PROCD_DIR"/cur.}
		i=${i%.pid}
		case $2 in '' | '*' | "$i") pd_signal "$i" "$3" ;; esac
	done
}
# rc.common's procd variants of start and reload
rc_procd() { procd_open_service jellydemon /etc/init.d/jellydemon; "$@"; procd_close_service; }
start() { rec start "$@"; rc_procd start_service "$@"; }
reload() {
	if type reload_service >/dev/null 2>&1; then reload_service "$@"; else start; fi
}
procd_kill() { rec procd_kill "$@"; }
# rc.common's stop for USE_PROCD services (OpenWrt 23.05 and later)
rc_stop() {
	stop_service "$@"
	procd_kill jellydemon "$1"
	if type service_stopped >/dev/null 2>&1; then service_stopped; fi
}
logger() { rec logger "$@"; }
# ubus reports the daemon's pid as procd would; jsonfilter extracts it
ubus() { rec ubus "$@"; [ -n "${MOCK_PID:-}" ] && printf '{"jellydemon":{"instances":{"jellydemon":{"running":true,"pid":%s}}}}\n' "$MOCK_PID"; return 0; }
jsonfilter() { rec jsonfilter "$@"; sed -n 's/.*"pid":\([0-9]*\).*/\1/p'; }
EOF
# A stand-in daemon for restore: records its argv.
printf '#!/bin/sh\nIFS="|"; printf "%%s\\n" "fake-daemon|$*" >>"$CALLS"\n' >"$TMP/fake-daemon"
chmod +x "$TMP/fake-daemon"

# init_run NAME 'shell code run after sourcing the init script' [VAR=value...]
init_run() {
	local name=$1 code=$2
	shift 2
	CALLS="$TMP/calls.$name"
	: >"$CALLS"
	env CALLS="$CALLS" FAKE="$TMP/fake-daemon" "$@" timeout 30 "${INIT_SH[@]}" -c \
		". '$TMP/mock.sh'; . '$FEED/files/jellydemon.init'; $code" >"$TMP/out.$name" 2>&1
}

t_init_enabled() {
	init_run enabled 'start_service; service_triggers' MOCK_main_enabled=1 || return 1
	local want
	want=$(printf '%s\n' \
		'config_load|jellydemon' \
		'procd_open_instance|jellydemon' \
		'procd_set_param|command|/usr/sbin/jellydemon|--config|/etc/config/jellydemon|run' \
		'procd_set_param|file|/etc/config/jellydemon|/etc/config/jellydemon_secrets' \
		'procd_set_param|reload_signal|HUP' \
		'procd_set_param|term_timeout|10' \
		'procd_set_param|respawn|3600|5|5' \
		'procd_set_param|stdout|1' \
		'procd_set_param|stderr|1' \
		'procd_close_instance' \
		'procd_add_reload_trigger|jellydemon|jellydemon_secrets' \
		'config_load|jellydemon' \
		'procd_open_trigger' \
		'procd_add_interface_trigger|interface.*|wan|/etc/init.d/jellydemon|netchange' \
		'procd_add_interface_trigger|interface.*|lan|/etc/init.d/jellydemon|netchange' \
		'procd_close_trigger')
	eq "$(cat "$TMP/calls.enabled")" "$want"
}
check "init: enabled=1 starts one instance with the documented parameters" t_init_enabled

t_init_refuses() {
	local v
	for v in 0 off absent; do
		if [ "$v" = absent ]; then init_run "off-$v" 'start_service' || return 1
		else init_run "off-$v" 'start_service' MOCK_main_enabled=$v || return 1; fi
		local c
		c=$(cat "$TMP/calls.off-$v")
		if contains "$c" procd_open_instance >/dev/null; then echo "enabled=$v started an instance"; return 1; fi
		contains "$c" 'logger|-t|jellydemon|-p|daemon.notice|not starting: jellydemon.main.enabled is 0' || return 1
	done
}
check "init: enabled=0 (or absent) refuses to start and logs why" t_init_refuses

t_init_triggers_disabled() {
	init_run trigoff 'service_triggers' MOCK_main_enabled=0 || return 1
	eq "$(cat "$TMP/calls.trigoff")" "$(printf '%s\n' 'procd_add_reload_trigger|jellydemon|jellydemon_secrets' 'config_load|jellydemon')"
}
check "init: disabled, only the config trigger (enabling in LuCI starts it)" t_init_triggers_disabled

t_init_triggers_configured() {
	init_run trigif 'service_triggers' MOCK_main_enabled=1 MOCK_network_wan_interface=wwan \
		MOCK_network_lan_interface=guest || return 1
	eq "$(grep interface "$TMP/calls.trigif")" "$(printf '%s\n' \
		'procd_add_interface_trigger|interface.*|wwan|/etc/init.d/jellydemon|netchange' \
		'procd_add_interface_trigger|interface.*|guest|/etc/init.d/jellydemon|netchange')" || return 1
	init_run trigsame 'service_triggers' MOCK_main_enabled=1 MOCK_network_wan_interface=lan || return 1
	eq "$(grep -c interface_trigger "$TMP/calls.trigsame")" 1
}
check "init: interface triggers follow network.wan_interface / lan_interface" t_init_triggers_configured

t_init_no_secret() {
	local c
	c=$(grep '^procd_set_param|command' "$TMP/calls.enabled")
	case $c in *api_key* | *api-key* | *apikey* | *token* | *key=*) echo "secret on the command line: $c"; return 1 ;; esac
}
check "init: no secret on the command line" t_init_no_secret

t_init_reload() {
	init_run reload 'if type reload_service >/dev/null 2>&1; then echo "reload_service defined"; fi' || return 1
	[ ! -s "$TMP/out.reload" ] || { cat "$TMP/out.reload"; return 1; }
	init_run netchange 'netchange' || return 1
	eq "$(cat "$TMP/calls.netchange")" 'procd_send_signal|jellydemon|jellydemon|HUP'
}
check "init: no reload_service (procd signals on a changed file); netchange sends one HUP" t_init_reload

# The init script, the procd model above and the real daemon together: a `uci commit` (the file
# rewritten) followed by `reload` (what procd's config.change trigger and LuCI's Save & Apply
# run) must reach the daemon as exactly one SIGHUP, i.e. one "configuration reloaded" line.
DAEMON_BIN=${JELLYDEMON_BIN:-}
for b in "$CROSS_OUT/x86_64-unknown-linux-musl/jellydemon" "$ROOT/target/debug/jellydemon" \
	"$ROOT/target/release/jellydemon"; do
	[ -z "$DAEMON_BIN" ] && [ -x "$b" ] && DAEMON_BIN=$b
done
# await_count FILE TEXT N: FILE has N lines containing TEXT, awaited as they are written (bounded;
# tail is left to its timeout so that nothing waits for it)
await_count() {
	local n=0 line
	while IFS= read -r line; do
		case $line in *"$2"*) n=$((n + 1)) && [ "$n" -ge "$3" ] && return 0 ;; esac
	done < <(timeout 20 tail -n +1 -f "$1")
	return 1
}
await_reloads() { await_count "$PD/daemon.log" 'configuration reloaded' "$1"; }
pd_run() {
	local name=$1 code=$2
	init_run "$name" "CONF='$PD/jellydemon'; SECRETS='$PD/jellydemon_secrets'; PROG='$DAEMON_BIN'; $code" \
		PROCD_DIR="$PD" MOCK_main_enabled=1
}
t_procd_one_reload() {
	PD=$TMP/procd
	write_config http://127.0.0.1:9 "$PD"
	pd_run pdstart start || return 1
	PIDS+=("$(cat "$PD/cur.jellydemon.pid")")
	# the signal handlers are installed before the daemon says it is starting
	await_count "$PD/daemon.log" ' starting' 1 ||
		{ echo "daemon did not start: $(cat "$PD/daemon.log")"; return 1; }
	# `uci set jellydemon.main.interval=2; uci commit jellydemon`, then the trigger's reload
	sed -i "s/option interval '1'/option interval '2'/" "$PD/jellydemon"
	pd_run pdreload reload || return 1
	eq "$(cat "$PD/signals")" HUP || return 1
	await_reloads 1 || { echo "no reload logged: $(cat "$PD/daemon.log")"; return 1; }
	# a reload without a change (a second trigger for the same commit) signals nothing
	pd_run pdreload2 reload || return 1
	eq "$(cat "$PD/signals")" HUP || return 1
	# a change of the secrets file alone is a change too
	printf "config jellyfin 'jellyfin'\n\toption api_key '%s0'\n" "$API_KEY" >"$PD/jellydemon_secrets"
	pd_run pdreload3 reload || return 1
	eq "$(cat "$PD/signals")" "$(printf 'HUP\nHUP')" || return 1
	await_reloads 2 || { echo "second reload not logged: $(cat "$PD/daemon.log")"; return 1; }
	# an interface event: one more; by now any extra SIGHUP of the commits would have shown
	pd_run pdnet netchange || return 1
	await_reloads 3 || { echo "netchange reload not logged: $(cat "$PD/daemon.log")"; return 1; }
	eq "$(grep -c 'configuration reloaded' "$PD/daemon.log")" 3 || return 1
	case $(cat "$PD/daemon.log") in *"$API_KEY"*) echo "API key in the log"; return 1 ;; esac
	kill "$(cat "$PD/cur.jellydemon.pid")"
}
t_procd_double_detected() {
	# the model tells a script that also signals in reload_service (the old one) apart
	PD=$TMP/procd-double
	mkdir -p "$PD"
	printf 'a\n' >"$PD/jellydemon"
	pd_run dblstart "PROG=sleep; start_service() { procd_open_instance jellydemon; procd_set_param command sleep 30; procd_set_param file \"\$CONF\"; procd_set_param reload_signal HUP; procd_close_instance; }; start" || return 1
	PIDS+=("$(cat "$PD/cur.jellydemon.pid")")
	printf 'b\n' >"$PD/jellydemon"
	pd_run dblreload "start_service() { procd_open_instance jellydemon; procd_set_param command sleep 30; procd_set_param file \"\$CONF\"; procd_set_param reload_signal HUP; procd_close_instance; }; reload_service() { start; procd_send_signal jellydemon '*' HUP; }; reload" || return 1
	eq "$(cat "$PD/signals")" "$(printf 'HUP\nHUP')"
}
if [ -n "$DAEMON_BIN" ]; then
	check "init + procd model + daemon: uci commit then reload = exactly one SIGHUP, one reload" t_procd_one_reload
else
	skip "init + procd model + daemon: one reload per change" "no jellydemon binary (cargo build)"
fi
check "procd model: a reload_service that signals again counts as two SIGHUPs" t_procd_double_detected

t_init_stop_dead() {
	init_run stopdead 'PROG=$FAKE; rc_stop' || return 1
	contains "$(cat "$TMP/calls.stopdead")" 'fake-daemon|--config|/etc/config/jellydemon|restore'
}
check "init: stop with the daemon dead runs 'restore' itself" t_init_stop_dead

t_init_stop_clean() {
	sleep 0.3 &
	local pid=$!
	PIDS+=("$pid")
	init_run stopclean 'PROG=$FAKE; rc_stop' MOCK_PID=$pid || return 1
	if grep -q fake-daemon "$TMP/calls.stopclean"; then
		echo "restore ran although the daemon exited by itself"
		return 1
	fi
	grep -q '^ubus|call|service|list' "$TMP/calls.stopclean"
}
check "init: stop with a daemon that exits on SIGTERM leaves clean-up to it" t_init_stop_clean

t_init_stop_stuck() {
	# TERM_TIMEOUT=2: a daemon still alive after 1 s is treated as stuck; this one lives 2.5 s
	sleep 2.5 &
	local pid=$!
	PIDS+=("$pid")
	init_run stopstuck 'PROG=$FAKE; TERM_TIMEOUT=2; rc_stop' MOCK_PID=$pid || return 1
	if [ -d "/proc/$pid" ]; then echo "returned before the daemon was gone"; return 1; fi
	# restore only after procd was told to stop the instance
	local c
	c=$(grep -E '^(procd_kill|fake-daemon)' "$TMP/calls.stopstuck")
	eq "$c" "$(printf '%s\n' 'procd_kill|jellydemon|' 'fake-daemon|--config|/etc/config/jellydemon|restore')"
}
check "init: stop with a daemon that outlives SIGTERM restores after it is gone" t_init_stop_stuck

# ---------------------------------------------------------------------------------------------
# feed Makefile: the fields the product contract fixes
# ---------------------------------------------------------------------------------------------
t_feed_makefile() {
	local mk="$FEED/Makefile" l
	for l in 'include $(TOPDIR)/rules.mk' 'PKG_BUILD_DEPENDS:=rust/host' "PKG_VERSION:=$VERSION" \
		'PKG_RELEASE:=1' 'PKG_SOURCE:=$(PKG_NAME)-$(PKG_VERSION).tar.gz' \
		'PKG_SOURCE_URL:=https://github.com/jellydemon/jellydemon/releases/download/v$(PKG_VERSION)/' \
		'PKG_LICENSE:=GPL-2.0-only' 'PKG_LICENSE_FILES:=LICENSE' \
		'include $(INCLUDE_DIR)/package.mk' \
		'include ../../lang/rust/rust-package.mk' \
		'  DEPENDS:=$(RUST_ARCH_DEPENDS) +tc +kmod-ifb +kmod-sched-core' \
		'/etc/config/jellydemon' '/etc/config/jellydemon_secrets' \
		'	$(INSTALL_BIN) $(PKG_INSTALL_DIR)/bin/jellydemon $(1)/usr/sbin/jellydemon' \
		'$(eval $(call RustBinPackage,jellydemon))' '$(eval $(call BuildPackage,jellydemon))'; do
		grep -qxF -- "$l" "$mk" || { echo "missing line: $l"; return 1; }
	done
	# feed rules: a fixed hash (not skip, not a placeholder), a maintainer with an address,
	# relative includes only, no git source
	grep -qE '^PKG_HASH:=[0-9a-f]{64}$' "$mk" || { echo "PKG_HASH is not a sha256"; return 1; }
	if grep -qE '^PKG_HASH:=0{64}$' "$mk"; then echo "PKG_HASH is a placeholder"; return 1; fi
	grep -qE '^PKG_MAINTAINER:=.+ <[^ @]+@[^ >]+>$' "$mk" || { echo "PKG_MAINTAINER needs 'Name <address>'"; return 1; }
	if grep -nE 'TOPDIR\)/feeds|PKG_MIRROR_HASH|PKG_SOURCE_PROTO|skip' "$mk"; then return 1; fi
	# every ./files/... the install section uses exists
	local f
	while IFS= read -r f; do
		[ -f "$FEED/files/$f" ] || { echo "missing files/$f"; return 1; }
	done < <(sed -n 's|.*\./files/\([^ ]*\) .*|\1|p' "$mk")
	# the install section must be defined before RustBinPackage, or it installs to /usr/bin
	local i r
	i=$(grep -n '^define Package/jellydemon/install' "$mk" | cut -d: -f1)
	r=$(grep -n 'call RustBinPackage' "$mk" | cut -d: -f1)
	if [ -z "$i" ] || [ -z "$r" ] || [ "$i" -gt "$r" ]; then
		echo "install section after RustBinPackage"
		return 1
	fi
	grep -q '^Cargo.lock$' <(git -C "$ROOT" ls-files Cargo.lock) || { echo "Cargo.lock not committed"; return 1; }
	# the license file is GPL-2.0's full text, as Cargo.toml says
	grep -qx 'license = "GPL-2.0-only"' "$ROOT/Cargo.toml" || { echo "Cargo.toml license differs"; return 1; }
	if ! grep -q 'GNU GENERAL PUBLIC LICENSE' "$ROOT/LICENSE" || ! grep -q 'Version 2, June 1991' "$ROOT/LICENSE" ||
		[ "$(wc -l <"$ROOT/LICENSE")" -lt 300 ]; then
		echo "LICENSE is not the GPL-2.0 text"
		return 1
	fi
	# sysupgrade keeps the state directory (default state_dir)
	eq "$(cat "$FEED/files/jellydemon.upgrade")" /etc/jellydemon/
}
check "feed Makefile: feed layout, source + hash, license, maintainer, installs" t_feed_makefile

# PKG_HASH must be the hash of the tarball the tag gives (openwrt/release.sh), so the SDK's
# download check passes.
t_feed_hash() {
	local tag=v$VERSION out want got
	out=$("$ROOT/openwrt/release.sh" "$tag" "$TMP/release") || return 1
	got=${out%% *}
	want=$(sed -n 's/^PKG_HASH:=//p' "$FEED/Makefile")
	eq "$got" "$want" || return 1
	# what the SDK unpacks: jellydemon-<version>/ with Cargo.lock and LICENSE, without the
	# Makefile that holds the hash
	local list
	list=$(tar -tzf "$TMP/release/jellydemon-$VERSION.tar.gz")
	contains "$list" "jellydemon-$VERSION/Cargo.lock" >/dev/null || return 1
	contains "$list" "jellydemon-$VERSION/LICENSE" >/dev/null || return 1
	if grep -qx "jellydemon-$VERSION/net/jellydemon/Makefile" <<<"$list"; then echo "Makefile in the tarball"; return 1; fi
	# byte-identical when made again
	"$ROOT/openwrt/release.sh" "$tag" "$TMP/release2" >/dev/null &&
		cmp "$TMP/release/jellydemon-$VERSION.tar.gz" "$TMP/release2/jellydemon-$VERSION.tar.gz"
}
if git -C "$ROOT" rev-parse -q --verify "refs/tags/v$VERSION^{commit}" >/dev/null; then
	check "feed Makefile: PKG_HASH is the sha256 of the v$VERSION tarball (git archive | gzip -n)" t_feed_hash
else
	skip "feed Makefile: PKG_HASH against the tag" "no tag v$VERSION in this clone"
fi

# ---------------------------------------------------------------------------------------------
# cross builds and qemu smoke tests
# ---------------------------------------------------------------------------------------------
# read_elf FILE: prints "class data machine" from the ELF header (e_ident and e_machine)
read_elf() {
	local h
	h=$(od -An -tx1 -N20 -v "$1" | tr -d ' \n')
	[ "${h:0:8}" = 7f454c46 ] || { echo "not ELF"; return 1; }
	local class=${h:8:2} data=${h:10:2} m
	if [ "$data" = 01 ]; then m=${h:38:2}${h:36:2}; else m=${h:36:2}${h:38:2}; fi
	printf '%s %s %s\n' "$class" "$data" "$m"
}
# expected "class data machine" per triple: 02=64-bit 01=32-bit; 01=LE 02=BE; EM_* in hex
elf_want() {
	case $1 in
	x86_64-*) echo "02 01 003e" ;;
	aarch64-*) echo "02 01 00b7" ;;
	armv7-*) echo "01 01 0028" ;;
	mipsel-*) echo "01 01 0008" ;;
	mips-*) echo "01 02 0008" ;;
	esac
}

# the emulator, when this branch has it; prints its port
EMU_PORT=""
start_emulator() {
	local emu=""
	for e in "$ROOT/target/debug/examples/homenet" "$ROOT/target/release/examples/homenet"; do
		[ -x "$e" ] && emu=$e && break
	done
	[ -n "$emu" ] || { echo "no target/*/examples/homenet (cargo build --examples)"; return 1; }
	# whole output first: grep -q would end the pipe early and pipefail would call that a failure
	local help
	help=$("$emu" --help 2>&1)
	contains "$help" jellyfin >/dev/null || { echo "homenet has no 'jellyfin' verb yet"; return 1; }
	write_world
	# port 0: the emulator binds a free port and prints it; its first line is awaited through a
	# FIFO (bounded), then the rest of its output is drained to a log
	mkfifo "$TMP/emu.fifo"
	"$emu" jellyfin --listen 127.0.0.1:0 --world "$TMP/world.json" >"$TMP/emu.fifo" 2>"$TMP/emu.err" &
	PIDS+=("$!")
	local line=""
	exec 4<"$TMP/emu.fifo"
	while IFS= read -r -t 20 line <&4; do
		case $line in *"listening on http://127.0.0.1:"*) break ;; esac
	done
	cat <&4 >"$TMP/emu.log" &
	PIDS+=("$!")
	exec 4<&-
	EMU_PORT=${line##*http://127.0.0.1:}
	EMU_PORT=${EMU_PORT%%[!0-9]*}
	if [ -z "$EMU_PORT" ]; then
		echo "emulator did not say where it listens within 20 s: $(tail -n 3 "$TMP/emu.err")"
		return 1
	fi
}

if [ "${JELLYDEMON_SKIP_CROSS:-0}" = 1 ]; then
	skip "cross builds" "JELLYDEMON_SKIP_CROSS=1"
else
	# shellcheck disable=SC2086 # a list of target names
	if "$ROOT/openwrt/cross.sh" $TARGETS >"$TMP/cross.log" 2>&1; then
		pass "cross build: $TARGETS"
	else
		fail "cross build: $TARGETS" "$(tail -n 30 "$TMP/cross.log")"
	fi
fi

EMU_WHY=""
start_emulator >"$TMP/emu.why" 2>&1 || EMU_WHY=$(cat "$TMP/emu.why")

for t in $TARGETS; do
	triple=$("$ROOT/openwrt/cross.sh" triple "$t")
	qemu=$("$ROOT/openwrt/cross.sh" qemu "$t")
	bin=$CROSS_OUT/$triple/jellydemon
	if [ ! -f "$bin" ]; then
		skip "$triple smoke tests" "no binary"
		continue
	fi
	t_elf() {
		local got
		got=$(read_elf "$bin") || return 1
		eq "$got" "$(elf_want "$triple")" || return 1
		local f
		f=$(file -b "$bin")
		case $f in *"statically linked"* | *"static-pie linked"*) ;; *) echo "not static: $f"; return 1 ;; esac
		case $f in *"not stripped"* | *"with debug_info"*) echo "not stripped: $f"; return 1 ;; esac
	}
	check "$triple: static, stripped ELF for the right CPU" t_elf
	run=("$qemu" "$bin")
	[ "$triple" = x86_64-unknown-linux-musl ] && run=("$bin")
	t_version() {
		local v
		v=$(timeout 60 "${run[@]}" --version 2>&1) || { echo "exit $?: $v"; return 1; }
		case $v in "jellydemon $VERSION" | "jellydemon $VERSION "*) ;; *) eq "$v" "jellydemon $VERSION" ;; esac
	}
	check "$triple: --version under ${run[0]##*/}" t_version

	help=$(timeout 60 "${run[@]}" --help 2>&1)
	if ! grep -qw check <<<"$help"; then
		skip "$triple: check against a config" "the binary has no 'check' verb yet"
		skip "$triple: run --once against the Jellyfin emulator" "the binary has no 'run' verb yet"
		continue
	fi
	if [ -n "$EMU_WHY" ]; then
		skip "$triple: check against a config" "$EMU_WHY"
		skip "$triple: run --once against the Jellyfin emulator" "$EMU_WHY"
		continue
	fi
	write_config "http://127.0.0.1:$EMU_PORT" "$TMP/smoke"
	t_check() {
		local out rc
		out=$(timeout 120 "${run[@]}" --config "$TMP/smoke/jellydemon" check 2>&1)
		rc=$?
		# 0 = all good, 1 = something to fix (e.g. no tc here); anything else is a crash
		[ "$rc" -le 1 ] || { echo "exit $rc: $out"; return 1; }
		case $out in *panicked* | *"$API_KEY"*) echo "panic or secret in output: $out"; return 1 ;; esac
		contains "$(printf '%s' "$out" | tr '[:upper:]' '[:lower:]')" "jellyfin"
	}
	check "$triple: check against a config" t_check
	t_once() {
		rm -f "$TMP/smoke/run/status.json"
		local out
		out=$(timeout 120 "${run[@]}" --config "$TMP/smoke/jellydemon" run --once --stderr 2>&1) ||
			{ echo "run --once failed: $out"; return 1; }
		[ -s "$TMP/smoke/run/status.json" ] || { echo "no status.json: $out"; return 1; }
		# the binary really talked to the emulator: the version it reports comes from there
		local st
		st=$(cat "$TMP/smoke/run/status.json")
		grep -Eq '"reachable": ?true' <<<"$st" || { echo "Jellyfin not reachable: $st"; return 1; }
		grep -Eq "\"server_version\": ?\"$EMU_VERSION\"" <<<"$st" || { echo "no server_version $EMU_VERSION: $st"; return 1; }
		case $st in *"$API_KEY"*) echo "API key in status.json"; return 1 ;; esac
	}
	check "$triple: run --once against the Jellyfin emulator" t_once
done

# ---------------------------------------------------------------------------------------------
# .ipk: built from the cross binaries, unpacked with plain tar
# ---------------------------------------------------------------------------------------------
CONFIG_FILE=$FEED/files/jellydemon.config
if [ ! -f "$CONFIG_FILE" ]; then
	# net/jellydemon/files/jellydemon.config is the default configuration the package ships; until this branch
	# has it, package a minimal stand-in so the package format is still tested.
	printf "\nconfig jellydemon 'main'\n\toption enabled '0'\n" >"$TMP/placeholder.config"
	CONFIG_FILE=$TMP/placeholder.config
	printf 'note  net/jellydemon/files/jellydemon.config missing: packaging a minimal stand-in config\n'
fi

LUCI_DIR=$ROOT/luci-app-jellydemon
if [ ! -d "$LUCI_DIR" ]; then
	# the LuCI app's files come from its own Makefile and directories; until this branch has
	# them, a small stand-in tree checks that whatever is there gets packaged
	LUCI_DIR=$TMP/luci-app-jellydemon
	mkdir -p "$LUCI_DIR/htdocs/luci-static/resources/view/jellydemon" \
		"$LUCI_DIR/root/usr/share/luci/menu.d" "$LUCI_DIR/root/usr/libexec/rpcd"
	echo "'use strict';" >"$LUCI_DIR/htdocs/luci-static/resources/view/jellydemon/status.js"
	echo '{}' >"$LUCI_DIR/root/usr/share/luci/menu.d/luci-app-jellydemon.json"
	printf '#!/bin/sh\necho "{}"\n' >"$LUCI_DIR/root/usr/libexec/rpcd/luci.jellydemon"
	chmod 0755 "$LUCI_DIR/root/usr/libexec/rpcd/luci.jellydemon"
	printf 'note  luci-app-jellydemon/ missing: packaging a stand-in LuCI tree\n'
fi
export JELLYDEMON_LUCI_DIR=$LUCI_DIR

ipk_arch_of() {
	case $1 in
	x86_64) echo x86_64 ;; aarch64) echo aarch64_cortex-a53 ;;
	armv7) echo arm_cortex-a7_neon-vfpv4 ;; mipsel) echo mipsel_24kc ;; mips) echo mips_24kc ;;
	*) echo "$1" ;;
	esac
}

for t in $TARGETS; do
	arch=$(ipk_arch_of "$t")
	triple=$("$ROOT/openwrt/cross.sh" triple "$t")
	if [ ! -f "$CROSS_OUT/$triple/jellydemon" ]; then skip "ipk $arch" "no binary"; continue; fi
	ipkdir=$TMP/dist-$arch
	if ! JELLYDEMON_DEFAULT_CONFIG=$CONFIG_FILE "$ROOT/openwrt/ipk.sh" "$arch" "$ipkdir" >"$TMP/ipk.log" 2>&1; then
		fail "ipk $arch: build" "$(cat "$TMP/ipk.log")"
		continue
	fi
	ipk=$ipkdir/jellydemon_${VERSION}-1_${arch}.ipk
	x=$TMP/x-$arch
	mkdir -p "$x/outer" "$x/control" "$x/data"
	t_outer() {
		[ -f "$ipk" ] || { echo "no $ipk"; return 1; }
		# opkg reads a gzip stream holding a tar, not an ar archive
		eq "$(od -An -tx1 -N2 "$ipk" | tr -d ' ')" 1f8b || return 1
		eq "$(tar -tzf "$ipk")" "$(printf '%s\n' ./debian-binary ./data.tar.gz ./control.tar.gz)" || return 1
		tar -xzf "$ipk" -C "$x/outer" || return 1
		eq "$(cat "$x/outer/debian-binary")" "2.0" || return 1
		tar -xzf "$x/outer/control.tar.gz" -C "$x/control" && tar -xzf "$x/outer/data.tar.gz" -C "$x/data"
	}
	check "ipk $arch: gzip tar of debian-binary, data.tar.gz, control.tar.gz" t_outer
	t_control() {
		local c="$x/control/control"
		eq "$(tar -tzf "$x/outer/control.tar.gz" | sort)" \
			"$(printf '%s\n' ./ ./conffiles ./control ./postinst ./prerm)" || return 1
		local want f
		for f in "Package: jellydemon" "Version: ${VERSION}-1" \
			"Depends: libc, tc, kmod-ifb, kmod-sched-core" "Section: net" \
			"License: GPL-2.0-only" "LicenseFiles: LICENSE" "Architecture: $arch" \
			"Source: feeds/packages/net/jellydemon"; do
			grep -qxF "$f" "$c" || { echo "missing '$f' in: $(cat "$c")"; return 1; }
		done
		for f in Source Maintainer Description Installed-Size; do
			grep -q "^$f: ." "$c" || { echo "no $f field"; return 1; }
		done
		want=$(gzip -dc "$x/outer/data.tar.gz" | wc -c)
		grep -qx "Installed-Size: $want" "$c" || { echo "Installed-Size is not $want"; return 1; }
		# every line is a field or a continuation line
		if grep -vqE '^([A-Z][A-Za-z-]*: .*| .+)$' "$c"; then echo "malformed control"; return 1; fi
		eq "$(cat "$x/control/conffiles")" "$(printf '%s\n' /etc/config/jellydemon /etc/config/jellydemon_secrets)"
	}
	check "ipk $arch: control fields and conffiles" t_control
	t_scripts() {
		local s
		for s in postinst prerm; do
			[ -x "$x/control/$s" ] || { echo "$s not executable"; return 1; }
			grep -qF '. "${IPKG_INSTROOT}/lib/functions.sh"' "$x/control/$s" || return 1
			grep -qF "default_$s \"\$0\" \"\$@\"" "$x/control/$s" || { echo "$s: no default_$s"; return 1; }
			shellcheck -s sh -e SC1091 "$x/control/$s" || return 1
		done
		grep -qF '[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0' "$x/control/postinst"
	}
	check "ipk $arch: postinst/prerm call OpenWrt's default_postinst/default_prerm" t_scripts
	t_data() {
		local want got
		want=$(printf '%s\n' './ 755 0/0' './etc/ 755 0/0' './etc/config/ 755 0/0' \
			'./etc/config/jellydemon 600 0/0' './etc/config/jellydemon_secrets 600 0/0' \
			'./etc/init.d/ 755 0/0' './etc/init.d/jellydemon 755 0/0' './lib/ 755 0/0' \
			'./lib/upgrade/ 755 0/0' './lib/upgrade/keep.d/ 755 0/0' \
			'./lib/upgrade/keep.d/jellydemon 644 0/0' \
			'./usr/ 755 0/0' './usr/sbin/ 755 0/0' './usr/sbin/jellydemon 755 0/0')
		got=$(tar -tvzf "$x/outer/data.tar.gz" --numeric-owner |
			awk '{ m = $1; p = 0; for (i = 2; i <= 10; i++) { c = substr(m, i, 1); if (c != "-") p += 2 ^ (9 - (i - 1)) * 1 } ;
				printf "%s %o %s\n", $6, p, $2 }' | sort)
		eq "$got" "$want" || return 1
		cmp -s "$x/data/usr/sbin/jellydemon" "$CROSS_OUT/$triple/jellydemon" || { echo "binary differs"; return 1; }
		cmp -s "$x/data/etc/init.d/jellydemon" "$FEED/files/jellydemon.init" || { echo "init differs"; return 1; }
		cmp -s "$x/data/etc/config/jellydemon_secrets" "$FEED/files/jellydemon_secrets.config" || { echo "secrets differ"; return 1; }
		eq "$(read_elf "$x/data/usr/sbin/jellydemon")" "$(elf_want "$triple")"
	}
	check "ipk $arch: data files, modes, owners, binary architecture" t_data
	# the feed CI's test.sh (test_entrypoint.sh runs `sh test.sh NAME VERSION` after install)
	t_feed_test() {
		mkdir -p "$x/bin"
		if [ "$triple" = x86_64-unknown-linux-musl ]; then
			ln -sf "$x/data/usr/sbin/jellydemon" "$x/bin/jellydemon"
		else
			printf '#!/bin/sh\nexec %s %s "$@"\n' "$("$ROOT/openwrt/cross.sh" qemu "$t")" "$x/data/usr/sbin/jellydemon" >"$x/bin/jellydemon"
			chmod +x "$x/bin/jellydemon"
		fi
		PATH="$x/bin:$PATH" JELLYDEMON_ROOT="$x/data" timeout 120 "${INIT_SH[@]}" "$FEED/test.sh" jellydemon "$VERSION"
	}
	check "ipk $arch: the feed's test.sh passes on the unpacked package" t_feed_test
	t_determinism() {
		JELLYDEMON_DEFAULT_CONFIG=$CONFIG_FILE "$ROOT/openwrt/ipk.sh" "$arch" "$ipkdir.again" >/dev/null || return 1
		cmp "$ipk" "$ipkdir.again/jellydemon_${VERSION}-1_${arch}.ipk" &&
			cmp "$ipkdir/luci-app-jellydemon_"*_all.ipk "$ipkdir.again/"luci-app-jellydemon_*_all.ipk
	}
	check "ipk $arch: byte-identical when built twice" t_determinism
	LUCI_OUT=$ipkdir
done

t_luci() {
	local ipk
	ipk=$(find "${LUCI_OUT:-/nonexistent}" -name 'luci-app-jellydemon_*_all.ipk' 2>/dev/null | head -n 1)
	[ -n "$ipk" ] || { echo "no luci-app-jellydemon ipk"; return 1; }
	local x=$TMP/luci
	mkdir -p "$x/outer" "$x/control" "$x/data"
	eq "$(tar -tzf "$ipk")" "$(printf '%s\n' ./debian-binary ./data.tar.gz ./control.tar.gz)" || return 1
	tar -xzf "$ipk" -C "$x/outer" && tar -xzf "$x/outer/control.tar.gz" -C "$x/control" &&
		tar -xzf "$x/outer/data.tar.gz" -C "$x/data" || return 1
	local f
	for f in "Package: luci-app-jellydemon" "Architecture: all" "Section: luci"; do
		grep -qxF "$f" "$x/control/control" || { echo "missing '$f'"; return 1; }
	done
	grep -q '^Depends: libc, .*jellydemon' "$x/control/control" || { echo "no Depends on jellydemon"; return 1; }
	# everything under htdocs/ lands in /www, everything under root/ in /
	local src=$LUCI_DIR want got
	want=$({
		[ -d "$src/htdocs" ] && (cd "$src/htdocs" && find . -type f | sed 's|^\./|./www/|')
		[ -d "$src/root" ] && (cd "$src/root" && find . -type f)
	} | sort)
	got=$(cd "$x/data" && find . -type f | sort)
	eq "$got" "$want" || return 1
	# modes: executables (rpcd plugins) 0755, everything else 0644, all owned by root
	local f m
	while IFS= read -r f; do
		m=$(stat -c %a "$x/data/$f")
		if [ -x "$src/root/$f" ] || [ -x "$src/htdocs/${f#./www/}" ]; then
			eq "$m" 755 || { echo "$f"; return 1; }
		else
			eq "$m" 644 || { echo "$f"; return 1; }
		fi
	done <<<"$got"
	if tar -tvzf "$x/outer/data.tar.gz" --numeric-owner | awk '$2 != "0/0"' | grep -q .; then
		echo "files not owned by 0/0"
		return 1
	fi
	[ -x "$x/control/postinst" ] && [ -x "$x/control/prerm" ] && [ -f "$x/control/postinst-pkg" ]
}
if [ -n "${LUCI_OUT:-}" ]; then
	check "ipk luci-app-jellydemon: control, /www + / contents, modes" t_luci
else
	skip "ipk luci-app-jellydemon" "no package was built (no cross binary)"
fi

t_apk_refuses() {
	local out rc
	out=$(make -s -C "$ROOT" apk 2>&1)
	rc=$?
	[ "$rc" -ne 0 ] || { echo "make apk succeeded"; return 1; }
	contains "$out" "does not exist"
}
check "make apk says it does not exist and points to the SDK" t_apk_refuses

echo
echo "package: $PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" -eq 0 ]
