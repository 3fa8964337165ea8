#!/usr/bin/env bash
# CPython 3.14 and 3.15 -- and their free-threaded builds where Debian ships
# them -- from Debian's own packages, in a Debian sid chroot that is cached
# outside the checkout, so that .ci/matrix.sh can run its cells on them.
#
#   bash .ci/newest-pythons.sh          # build (first time, ~2 min) or reuse (~1 s)
#   $CACHE/bin/run CMD [ARG...]          # run CMD inside the chroot
#   $CACHE/bin/python3.14 [ARG...]       # = $CACHE/bin/run /usr/bin/python3.14 ARG...
#
# The chroot ($CACHE/root) is a `debootstrap --variant=minbase sid` with
# python3.X, python3.X-venv, python3.X-dev (and python3.X-nogil where it
# exists), gcc and libc6-dev for scopetrace's C extension, ca-certificates,
# Debian's prometheus (promtool and the server, for tests/test_dashboards.py,
# as .ci/install-prometheus.sh gives the host), and valgrind (callgrind, for
# `benchmarks/overhead.py --interpreters`, which counts instructions in here)
# with python3.X-dbg: callgrind toggles on ctypes' closure_fcn, a static
# function that Debian strips; python3.X-dbg carries the standard build's
# symbols (/usr/lib/debug/.build-id), where valgrind finds them.
# It is built under $CACHE/root.new and only moved to $CACHE/root, and the
# stamp $CACHE/complete only written, once every step has succeeded: a build
# that was interrupted is thrown away and redone on the next run.
#
# $CACHE/bin/run enters the chroot in a private mount namespace of its own
# (unshare --mount), so each of its bind mounts disappears with the process:
# nothing is ever left mounted on the host, however the command ends, and
# parallel cells do not see each other's mounts.  It binds, at the same
# absolute path inside as outside: /dev, /proc, /sys, /tmp, $HOME (pip's and
# uv's caches and pip's per-user configuration), the git work tree containing
# the current directory (or the current directory), $UV_CACHE_DIR,
# $PIP_CACHE_DIR and $XDG_CACHE_HOME when set, every path in
# $SCOPETRACE_CHROOT_BINDS (colon-separated), and, read-only, the host's
# /etc/resolv.conf, /etc/hosts, /etc/ssl/certs, /etc/pip.conf, /etc/xdg/pip
# and every existing local path that pip's configuration files or PIP_*
# variables name (find-links, file:// indexes, constraints, certificates) --
# so pip and uv inside reach PyPI exactly as they do on the host.  Everything
# else of the chroot is mounted read-only (SCOPETRACE_CHROOT_WRITABLE=1 lifts
# that): a venv or file written to a path that is not bound fails with
# "Read-only file system" rather than landing, unseen, in the cache.  It keeps
# the current directory and the environment.  A venv made inside the chroot
# links to /usr/bin/python3.X of the chroot, so it only works inside: run
# everything of a 3.14/3.15 cell through $CACHE/bin/run, e.g.
#
#   run=$CACHE/bin/run
#   "$run" "$uv" venv -q --python /usr/bin/python3.14 "$venv"
#   "$run" "$uv" pip install -q --python "$venv/bin/python" "scopetrace[test] @ file://$sdist"
#   (cd "$root" && "$run" "$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider)
#
# Environment (all optional):
#   SCOPETRACE_CHROOT_CACHE     where the chroot lives, default /var/cache/scopetrace-ci/sid
#                               (outside the checkout, which CI clones afresh each run;
#                               /var/cache because the machine keeps it between runs and
#                               it can always be rebuilt)
#   SCOPETRACE_CHROOT_PYTHONS   minor versions, default "3.14 3.15"
#   SCOPETRACE_SID_MIRROR       Debian mirror, default the host's deb.debian.org entry
#   SCOPETRACE_CHROOT_REBUILD   1: rebuild even if the cached chroot is complete
#   SCOPETRACE_CHROOT_MAX_AGE_DAYS  rebuild (to follow sid) a chroot older than this,
#                               default 30; if that rebuild cannot get the packages,
#                               the old chroot is kept and used
#   SCOPETRACE_CHROOT_EXTRA_PACKAGES  other Debian packages for the chroot, installed
#                               where sid has them, default "prometheus valgrind"
#   SCOPETRACE_CHROOT_BINDS     extra host paths for $CACHE/bin/run to bind (colon-separated)
#
# Output: what it did, then one line per interpreter (`python -VV`), and the
# file $CACHE/pythons with one line per interpreter it provides:
#   <name> <path inside the chroot> <host wrapper> <free-threaded: 0|1>
#   e.g. "3.14 /usr/bin/python3.14 /var/cache/scopetrace-ci/sid/bin/python3.14 0"
#
# Exit codes:
#   0   the interpreters are ready (a requested minor version that sid does not
#       ship is reported as "SKIPPED" and left out of $CACHE/pythons)
#   77  skipped: none of the packages can be had here -- not root, no mount
#       namespaces/chroot, debootstrap not installable, the mirror unreachable,
#       or none of the requested versions in sid (77 is the usual "skipped" code)
#   1   failed for another reason (a real error: CI should fail)
#   2   usage error
set -euo pipefail

RECIPE=1   # bump when the package set or the layout below changes: forces a rebuild
SKIP=77

if [ $# -gt 0 ]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    [ "$1" = "-h" ] || [ "$1" = "--help" ] && exit 0 || exit 2
fi

cache=${SCOPETRACE_CHROOT_CACHE:-/var/cache/scopetrace-ci/sid}
minors=${SCOPETRACE_CHROOT_PYTHONS:-"3.14 3.15"}
max_age_days=${SCOPETRACE_CHROOT_MAX_AGE_DAYS:-30}
extras=${SCOPETRACE_CHROOT_EXTRA_PACKAGES-prometheus valgrind}
# valgrind brings the interpreters' symbols along (python3.X-dbg: see above).
case " $(echo $extras) " in *" valgrind "*) with_symbols=1 ;; *) with_symbols=0 ;; esac
root=$cache/root
stamp=$cache/complete
log=$cache/build.log
t0=$SECONDS

say() { printf 'newest-pythons: %s\n' "$*"; }
skip() { say "SKIPPED: $*"; exit "$SKIP"; }
fail() {
    { say "FAILED: $*"; [ -s "$log" ] && { say "last lines of $log:"; tail -n 25 "$log" | sed 's/^/    /'; }; } >&2
    exit 1
}

host_mirror() {  # the host's own deb.debian.org (or other Debian) mirror, if it has one
    local uri
    uri=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/* *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\(http[^ ]*\/debian\)\/* .*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${SCOPETRACE_SID_MIRROR:-$(host_mirror)}

# Long steps run as a job of this shell, so that a signal to the script stops
# them too (timeout(1) puts its command in a process group of its own, out of
# reach of a kill of ours), and the lock is released only once they are gone.
child=
on_signal() {
    say "interrupted: stopping${child:+ the current step}; the next run starts the build afresh" >&2
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
    exit 143
}
trap on_signal INT TERM HUP
bounded() {  # bounded SECONDS CMD...: CMD with a time limit, as a job of ours
    local t=$1 rc=0
    shift
    timeout "$t" "$@" &
    child=$!
    wait "$child" || rc=$?
    child=
    return "$rc"
}

# Paths under the cache may hold bind mounts only inside the private namespaces
# of bin/run; should anything ever be mounted below one in this namespace
# (another tool, an older script), unmount it before deleting, and never cross
# a file-system boundary while deleting.
remove_tree() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
        fail "$dir still has mounts below it; not deleting it"
    fi
    rm -rf --one-file-system "$dir"
}

mirror_reachable() {
    local url=$mirror/dists/sid/Release
    if command -v curl >/dev/null; then
        curl -fsS --max-time 30 -o /dev/null "$url" 2>>"$log"
    elif command -v wget >/dev/null; then
        wget -q -T 30 -O /dev/null "$url" 2>>"$log"
    else
        python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=30).read()" \
            "$url" 2>>"$log"
    fi
}

# --- bin/run and the per-interpreter wrappers ---------------------------------
write_wrappers() {
    local bin=$cache/bin name inner ft
    mkdir -p "$bin.new"
    cat >"$bin.new/run" <<'EOF'
#!/usr/bin/env bash
# Written by .ci/newest-pythons.sh: run a command inside the Debian sid chroot
# below, in a private mount namespace (its bind mounts vanish with it), with
# the current directory and the environment kept.
set -euo pipefail
root=@ROOT@
if [ -z "${_SCOPETRACE_IN_NS:-}" ]; then
    export _SCOPETRACE_IN_NS=1
    exec unshare --mount --propagation private -- "$0" "$@"
fi
unset _SCOPETRACE_IN_NS
[ $# -gt 0 ] || set -- /bin/bash

# A host path may be bound only where no component of it is a symbolic link
# inside the chroot: an absolute link there would resolve on the host.
safe_target() {
    local p=$1 acc=$root part
    local IFS=/
    for part in ${p#/}; do
        acc=$acc/$part
        [ -L "$acc" ] && return 1
    done
    return 0
}
# System directories are never bound from the host over the chroot's own.
denied() {
    case $1 in
        / | /usr | /usr/* | /bin | /bin/* | /sbin | /sbin/* | /lib | /lib/* | /lib32* | /lib64* | /libx32* \
        | /etc | /var | /var/lib | /var/lib/* | /boot | /boot/* | /run | /run/* | /proc* | /sys* | /dev*) return 0 ;;
    esac
    return 1
}
srcs=()
modes=()
bind() {  # bind HOST_PATH [rw|ro|ro-new]: plan a bind at the same path inside
    # ro-new: only where it hides nothing of the chroot's (absent, or an empty
    # mount point left by an earlier run).
    local src=$1 mode=${2:-rw} dst
    src=$(readlink -f -- "$src" 2>/dev/null) || return 0
    [ -e "$src" ] && [ "$src" != / ] || return 0
    case $src in "$root" | "$root"/*) return 0 ;; esac
    dst=$root$src
    if [ "$mode" != ro ] && denied "$src"; then
        echo "run: not binding $src (a system directory)" >&2
        return 0
    fi
    if [ "$mode" = ro-new ]; then
        if [ -f "$dst" ] && [ -s "$dst" ]; then return 0; fi
        if [ -d "$dst" ] && [ -n "$(find "$dst" -mindepth 1 \( -type l -o \( ! -type d ! -empty \) \) \
                -print -quit 2>/dev/null)" ]; then return 0; fi
    fi
    safe_target "$src" || { echo "run: not binding $src (a link inside the chroot)" >&2; return 0; }
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "${dst%/*}"; [ -e "$dst" ] || : >"$dst"; fi
    srcs+=("$src")
    modes+=("$mode")
}

paths=(/tmp "${HOME:-/root}")
top=$(git -C "$PWD" rev-parse --show-toplevel 2>/dev/null || pwd)
paths+=("$top" "$PWD")
for v in UV_CACHE_DIR PIP_CACHE_DIR XDG_CACHE_HOME; do
    [ -n "${!v:-}" ] && paths+=("${!v}")
done
IFS=: read -r -a extra <<<"${SCOPETRACE_CHROOT_BINDS:-}"
paths+=("${extra[@]}")
# Shorter paths first, so that a path inside another is bound on top of it.
while IFS= read -r p; do
    [ -n "$p" ] && bind "$p"
done < <(printf '%s\n' "${paths[@]}" | awk '{print length($0) "\t" $0}' | sort -n -u | cut -f2-)

# Networking and pip's configuration, read-only, exactly as on the host; then
# the local paths these name (find-links, file:// indexes, constraints), each
# by its ancestor two levels down (/opt/pypi for file:///opt/pypi/simple: an
# index links to files beside it), wherever that hides nothing of the chroot's.
for p in /etc/resolv.conf /etc/hosts /etc/ssl/certs /etc/pip.conf /etc/xdg/pip "${PIP_CONFIG_FILE:-}"; do
    [ -n "$p" ] && bind "$p" ro
done
confs=(/etc/pip.conf /etc/xdg/pip/pip.conf "${HOME:-/root}/.pip/pip.conf"
       "${HOME:-/root}/.config/pip/pip.conf" "${PIP_CONFIG_FILE:-/nonexistent}")
while IFS= read -r p; do
    bind "$p" ro-new
done < <({ grep -hv '^[[:space:]]*[#;]' "${confs[@]}" 2>/dev/null || true
           env | sed -n 's/^PIP_[A-Z_]*=//p'; } \
         | grep -oE '(file://)?/[^[:space:]"'"'"',;]+' | sed -E 's|^file://||; s|^(/[^/]+/[^/]+).*|\1|' | sort -u)

# The chroot itself is read-only (SCOPETRACE_CHROOT_WRITABLE=1 lifts that): a
# write to a path that is not bound fails loudly instead of landing in the
# cached chroot, and nothing a cell does changes the next cell's interpreter.
if [ "${SCOPETRACE_CHROOT_WRITABLE:-0}" != 1 ]; then
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
fi
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
for i in "${!srcs[@]}"; do
    mount --bind "${srcs[$i]}" "$root${srcs[$i]}"
    [ "${modes[$i]}" = rw ] || mount -o remount,bind,ro "$root${srcs[$i]}"
done

exec chroot "$root" /bin/sh -c 'cd "$0" 2>/dev/null || cd /; exec "$@"' "$PWD" "$@"
EOF
    sed -i "s|@ROOT@|$(printf '%q' "$root")|" "$bin.new/run"
    chmod +x "$bin.new/run"
    : >"$cache/pythons.new"
    while read -r name inner ft; do
        printf '#!/bin/sh\n# Written by .ci/newest-pythons.sh: %s inside the Debian sid chroot.\nexec %s %s "$@"\n' \
            "$inner" "$(printf '%q' "$bin/run")" "$inner" >"$bin.new/python$name"
        chmod +x "$bin.new/python$name"
        printf '%s %s %s %s\n' "$name" "$inner" "$bin/python$name" "$ft" >>"$cache/pythons.new"
    done < <(sed -n 's/^python //p' "$stamp")
    rm -rf "$bin"
    mv "$bin.new" "$bin"
    mv "$cache/pythons.new" "$cache/pythons"
}

report() {
    local name inner wrapper ft
    say "chroot: $root (Debian sid from $mirror, built $(sed -n 's/^built //p' "$stamp"))"
    while read -r name inner wrapper ft; do
        if [ "$ft" = 1 ]; then
            printf '  %-6s %s  [free-threaded; GIL enabled at start-up: %s]  %s\n' "$name" \
                "$(chroot "$root" "$inner" -VV 2>&1 | tr '\n' ' ')" \
                "$(chroot "$root" "$inner" -c 'import sys; print(sys._is_gil_enabled())' 2>&1)" "$wrapper"
        else
            printf '  %-6s %s  %s\n' "$name" "$(chroot "$root" "$inner" -VV 2>&1 | tr '\n' ' ')" "$wrapper"
        fi
    done <"$cache/pythons"
    sed -n 's/^unavailable /  SKIPPED (not in Debian sid): python/p' "$stamp"
    say "run commands inside with $cache/bin/run; interpreters listed in $cache/pythons"
}

# --- is the cached chroot complete and current? -------------------------------
fresh() {
    [ -f "$stamp" ] && [ -d "$root" ] || return 1
    grep -qx "recipe $RECIPE" "$stamp" || return 1   # (the mirror is not part of it)
    grep -qxF "extras $(echo $extras)" "$stamp" || return 1
    # A chroot from before valgrind came with the symbols has no such line.
    if [ "$with_symbols" = 1 ]; then grep -q '^symbols' "$stamp" || return 1; fi
    local m
    for m in $minors; do
        grep -qx "python $m /usr/bin/python$m 0" "$stamp" || grep -qx "unavailable $m" "$stamp" || return 1
        if grep -qx "python $m /usr/bin/python$m 0" "$stamp"; then
            [ -x "$root/usr/bin/python$m" ] || return 1
        fi
    done
    return 0
}
too_old() {
    [ -n "$(find "$stamp" -mtime +"$max_age_days" 2>/dev/null)" ]
}

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot and mount namespaces)"
mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w 1800 9 || fail "another newest-pythons.sh holds $cache/lock"

if fresh && [ "${SCOPETRACE_CHROOT_REBUILD:-0}" != 1 ] && ! too_old; then
    remove_tree "$root.new"   # left by an interrupted rebuild
    write_wrappers
    say "cached chroot is complete (stamp $stamp); nothing to build"
    report
    exit 0
fi

# --- build ---------------------------------------------------------------------
have_old=0
fresh && have_old=1   # complete but old, or a rebuild was asked for
say "building a Debian sid chroot with CPython {$minors} in $root (log: $log)"
: >"$log"
# What cannot be had is a skip, except when a complete older chroot can stand in.
unavailable() {
    if [ "$have_old" = 1 ]; then
        say "cannot rebuild ($*): keeping the chroot built $(sed -n 's/^built //p' "$stamp")"
        remove_tree "$root.new"
        write_wrappers
        report
        exit 0
    fi
    skip "$*"
}

unshare --mount --propagation private true 2>>"$log" \
    || unavailable "this machine does not allow mount namespaces (unshare --mount)"
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap on the host"
    { bounded 600 apt-get install -y -qq debootstrap \
        || { bounded 600 apt-get update -qq && bounded 600 apt-get install -y -qq debootstrap; }; } \
        >>"$log" 2>&1 || unavailable "debootstrap is not installed and apt-get cannot install it"
fi
mirror_reachable || unavailable "the Debian mirror $mirror is unreachable"

new=$root.new
remove_tree "$new"
rm -f "$stamp.new"
# Debootstrap mounts /proc and /sys in the target while it works: in a private
# namespace, so that an interrupted debootstrap leaves nothing mounted.
step_t=$SECONDS
say "debootstrap --variant=minbase sid ($mirror)"
if ! bounded 1200 unshare --mount --propagation private -- \
        debootstrap --variant=minbase sid "$new" "$mirror" >>"$log" 2>&1; then
    mirror_reachable || unavailable "the Debian mirror $mirror became unreachable during debootstrap"
    fail "debootstrap failed"
fi
say "  done in $((SECONDS - step_t))s"

cat >"$new/etc/apt/apt.conf.d/99scopetrace-ci" <<'EOF'
// sid's Release files are often past their Valid-Until on a snapshot or a slow mirror.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Dpkg::Use-Pty "false";
EOF
cp -L /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
# No services may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
chmod +x "$new/usr/sbin/policy-rc.d"

in_new() {  # in_new SECONDS CMD...: CMD in the half-built chroot (private namespace, /proc and /dev only)
    local t=$1
    shift
    bounded "$t" unshare --mount --propagation private -- /bin/sh -c '
        root=$1; shift
        mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" &&
        exec chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"' sh "$new" "$@"
}

step_t=$SECONDS
if ! in_new 600 apt-get update -q >>"$log" 2>&1; then
    mirror_reachable || unavailable "the Debian mirror $mirror became unreachable"
    fail "apt-get update in the chroot failed"
fi
candidate() {  # the version apt would install, or nothing
    in_new 120 apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '^(none)$' || true
}
pkgs=(gcc libc6-dev ca-certificates)
symbols=()
found=()
missing=()
for m in $minors; do
    v=$(candidate "python$m")
    if [ -z "$v" ] || [ -z "$(candidate "python$m-venv")" ] || [ -z "$(candidate "python$m-dev")" ]; then
        missing+=("$m")
        continue
    fi
    pkgs+=("python$m" "python$m-venv" "python$m-dev")
    found+=("$m")
    # The symbols valgrind needs (see the header); the debug build comes along.
    if [ "$with_symbols" = 1 ] && [ -n "$(candidate "python$m-dbg")" ]; then
        pkgs+=("python$m-dbg")
        symbols+=("python$m-dbg")
    fi
    # Debian's free-threaded build of the same source (the python3.13t style
    # interpreter) is packaged as python3.X-nogil, its headers as libpython3.Xt-dev.
    if [ -n "$(candidate "python$m-nogil")" ]; then
        pkgs+=("python$m-nogil")
        [ -n "$(candidate "libpython${m}t-dev")" ] && pkgs+=("libpython${m}t-dev")
        [ -n "$(candidate "python$m-nogil-dev")" ] && pkgs+=("python$m-nogil-dev")
    fi
done
{
    echo "== free-threaded packages sid offers:"
    in_new 120 apt-cache search nogil 2>&1 || true
    in_new 120 apt-cache search free-threaded 2>&1 || true
} >>"$log"
for p in $extras; do
    if [ -n "$(candidate "$p")" ]; then pkgs+=("$p"); else say "  $p: not in sid, not installed"; fi
done
[ ${#found[@]} -gt 0 ] || unavailable "Debian sid has none of python{$minors}(-venv,-dev)"
say "apt-get install ${pkgs[*]}"
if ! in_new 1200 apt-get install -y -q "${pkgs[@]}" >>"$log" 2>&1; then
    mirror_reachable || unavailable "the Debian mirror $mirror became unreachable"
    fail "apt-get install in the chroot failed"
fi
in_new 120 apt-get clean >>"$log" 2>&1 || true
say "  done in $((SECONDS - step_t))s"

{
    echo "recipe $RECIPE"
    echo "mirror $mirror"
    echo "extras $(echo $extras)"
    [ "$with_symbols" = 1 ] && echo "symbols ${symbols[*]+${symbols[*]}}"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for m in "${found[@]}"; do
        chroot "$new" "/usr/bin/python$m" -c pass >>"$log" 2>&1 \
            || fail "python$m does not run in the chroot"
        echo "python $m /usr/bin/python$m 0"
        if [ -x "$new/usr/bin/python${m}t" ]; then
            chroot "$new" "/usr/bin/python${m}t" -c 'import sys; assert not sys._is_gil_enabled()' \
                >>"$log" 2>&1 || fail "python${m}t runs with the GIL"
            echo "python ${m}t /usr/bin/python${m}t 1"
        fi
    done
    for m in ${missing[@]+"${missing[@]}"}; do echo "unavailable $m"; done
} >"$stamp.new"

# Swap in the new chroot; only then does the stamp say it is complete.
rm -f "$stamp"
remove_tree "$root.old"
[ -d "$root" ] && mv "$root" "$root.old"
mv "$new" "$root"
mv "$stamp.new" "$stamp"
remove_tree "$root.old"
write_wrappers
say "built in $((SECONDS - t0))s"
report
