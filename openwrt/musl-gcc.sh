#!/usr/bin/env bash
# Linker for the std-rebuilding musl targets (see cross.sh; the name ends in -gcc so that
# rustc passes gcc-style arguments): runs Debian's cross gcc against the
# musl built by cross.sh instead of glibc. rustc names its self-contained start files by bare
# name (it has none for these targets), so they are mapped to the musl and gcc directories;
# -lunwind becomes libgcc_eh; the _dl_find_object stub satisfies Debian's libgcc_eh.
set -euo pipefail
cc=${JELLYDEMON_LD_CC:?set by cross.sh}
sysroot=${JELLYDEMON_LD_SYSROOT:?set by cross.sh}
gccdir=${JELLYDEMON_LD_GCCDIR:?set by cross.sh}
read -r -a cflags <<<"${JELLYDEMON_LD_CFLAGS:-}"
args=()
for a in "$@"; do
	case $a in
	crt1.o | crti.o | crtn.o | Scrt1.o | rcrt1.o) args+=("$sysroot/lib/$a") ;;
	crtbegin*.o | crtend*.o) args+=("$gccdir/$a") ;;
	-lunwind) args+=(-lgcc_eh) ;;
	*) args+=("$a") ;;
	esac
done
exec "$cc" "${cflags[@]}" -nostdlib -L"$sysroot/lib" -L"$gccdir" "${args[@]}" \
	"$sysroot/lib/dlfo_stub.o" -lgcc
