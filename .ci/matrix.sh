#!/usr/bin/env bash
# The version matrix: the core test suite (pytest -m "not slow") on CPython
# 3.10-3.13, each with the lowest anyio 4.x scopetrace supports (the floor in
# pyproject.toml) and the newest anyio 4.x, plus trio (from the test extra)
# and uvloop wherever it installs.  tests/conftest.py runs every scenario on
# asyncio, asyncio with the eager task factory (3.12+), asyncio+uvloop and
# trio, so each cell covers all the backends its Python has.
#
# Prints a summary table; exits non-zero if any cell failed.
#
# Environment (all optional):
#   MATRIX_PYTHONS   minor versions to run, default "3.10 3.11 3.12 3.13 3.14 3.15"
#                    (3.14 and 3.15 come from Debian sid in a cached chroot, made by
#                    .ci/newest-pythons.sh, wherever pyenv does not have them)
#   MATRIX_ANYIO     "lowest newest" (default), or explicit versions, e.g. "4.5.0 4.16.0"
#   MATRIX_JOBS      cells run at once, default 2 (one per core)
#   MATRIX_DIR       venvs and logs, default build/matrix in this checkout
#   MATRIX_PYTEST    extra pytest arguments, e.g. "-x"
#   PYENV_ROOT       where the interpreters are, default ~/.pyenv
#   UV_CACHE_DIR     uv's wheel cache, default ~/.cache/uv (kept between runs)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pythons=${MATRIX_PYTHONS:-"3.10 3.11 3.12 3.13 3.14 3.15"}
anyios=${MATRIX_ANYIO:-"lowest newest"}
jobs=${MATRIX_JOBS:-2}
work=${MATRIX_DIR:-$root/build/matrix}
pyenv_versions=${PYENV_ROOT:-$HOME/.pyenv}/versions
mkdir -p "$work/logs" "$work/results"
rm -f "$work"/results/*

# The floor is written once, in pyproject.toml's dependencies.
floor=$(sed -n 's/^ *"anyio>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
if [ -z "$floor" ]; then
    echo "matrix: no \"anyio>=X\" dependency found in pyproject.toml" >&2
    exit 2
fi

started=$SECONDS

# CPython 3.14+ from Debian sid, in a chroot cached outside the checkout
# (~2 min the first time, ~0.2 s after); cells run inside it through
# $chroot/bin/run.  Exit 77: the packages cannot be had here, those cells skip.
chroot=${SCOPETRACE_CHROOT_CACHE:-/var/cache/scopetrace-ci/sid}
chroot_state=none
for minor in $pythons; do
    case $minor in 3.1[0-3]) continue ;; esac
    ls -d "$pyenv_versions/$minor".*/bin/python >/dev/null 2>&1 && continue
    code=0
    bash "$root/.ci/newest-pythons.sh" || code=$?
    case $code in
        0) chroot_state=ready ;;
        77) chroot_state=skipped ;;
        *) echo "matrix: .ci/newest-pythons.sh failed (exit $code)" >&2; exit 2 ;;
    esac
    break
done
# The chroot sees the host only through the paths bin/run binds: the checkout,
# /tmp and $HOME (uv's cache) -- and $work, wherever it is.
export SCOPETRACE_CHROOT_BINDS=$work${SCOPETRACE_CHROOT_BINDS:+:$SCOPETRACE_CHROOT_BINDS}

# uv creates and fills a venv in seconds where pip takes a minute or more (its
# resolver and wheel cache are faster); it comes from PyPI into its own venv.
uv_home=$work/uv
if [ ! -x "$uv_home/bin/uv" ]; then
    boot=$(ls -d "$pyenv_versions"/3.1[0-9]*/bin/python 2>/dev/null | sort -V | tail -n 1)
    boot=${boot:-python3}
    { "$boot" -m venv "$uv_home" && "$uv_home/bin/python" -m pip install -q uv; } \
        >"$work/logs/uv.log" 2>&1 \
        || { echo "matrix: could not install uv (see $work/logs/uv.log)" >&2; exit 2; }
fi
uv=$uv_home/bin/uv

# Every cell installs one sdist: parallel cells building from this source tree
# would share its build/ directory, and the sdist is what users install from
# when no wheel fits.  uv caches the wheel it builds from it for each Python.
rm -rf "$work/dist"
"$uv" build -q --sdist -o "$work/dist" "$root" >"$work/logs/sdist.log" 2>&1 \
    || { echo "matrix: building the sdist failed (see $work/logs/sdist.log)" >&2; exit 2; }
sdist=$(ls "$work"/dist/scopetrace-*.tar.gz)

interpreter() {  # newest installed patch release of a minor version
    local found
    found=$(ls -d "$pyenv_versions/$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ] && [ "$chroot_state" = ready ]; then  # inside the chroot
        found=$(awk -v m="$1" '$1 == m {print $2}' "$chroot/pythons")
    fi
    echo "$found"
}
runner() {  # what runs a cell's commands: nothing, or the chroot's bin/run
    case $1 in /usr/bin/*) echo "$chroot/bin/run" ;; esac
}

# One cell: build its venv, run the suite, leave a result line behind.
run_cell() {
    local minor=$1 which=$2 python venv log spec versions summary code t0 run
    t0=$SECONDS
    case $which in
        lowest) spec="anyio==$floor" ;;
        newest) spec="anyio>=4,<5" ;;
        *) spec="anyio==$which" ;;
    esac
    venv=$work/venv-py$minor-anyio-$which
    log=$work/logs/py$minor-anyio-$which.log
    python=$(interpreter "$minor")
    run=$(runner "$python")
    if [ -z "$python" ] && [ "$chroot_state" = skipped ]; then
        # The one case a cell may skip: Debian's packages cannot be had here.
        printf '%s %s - - - 77 0 %s\n' "$minor" "$which" \
            "skipped: no CPython $minor here and Debian's cannot be had (.ci/newest-pythons.sh exit 77)" \
            >"$work/results/py$minor-anyio-$which"
        return
    fi
    {
        if [ -z "$python" ]; then
            echo "no CPython $minor under $pyenv_versions${chroot_state:+ (Debian sid chroot: $chroot_state)}"
            exit 3
        fi
        rm -rf "$venv"
        $run "$uv" venv -q --python "$python" "$venv" || exit 3
        $run "$uv" pip install -q --python "$venv/bin/python" "scopetrace[test] @ file://$sdist" "$spec" \
            || exit 3
        # uvloop where it installs (it has no wheels for every Python / platform).
        $run "$uv" pip install -q --python "$venv/bin/python" uvloop \
            || echo "uvloop does not install here: running without it"
    } >"$log" 2>&1
    code=$?
    if [ $code -eq 0 ]; then
        versions=$($run "$venv/bin/python" - <<'EOF'
import importlib.metadata as m
def v(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"
print(v("anyio"), v("trio"), v("uvloop"))
EOF
)
        # shellcheck disable=SC2086
        (cd "$root" && $run "$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider \
            ${MATRIX_PYTEST:-}) >>"$log" 2>&1
        code=$?
        summary=$(grep -E '^=*.*[0-9]+ (passed|failed|error|errors|skipped|no tests ran)' "$log" \
            | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    else
        versions="- - -"
        summary="setup failed (see log)"
    fi
    printf '%s %s %s %s %s %s\n' "$minor" "$which" "$versions" "$code" \
        "$((SECONDS - t0))" "$summary" >"$work/results/py$minor-anyio-$which"
}

echo "matrix: CPython {$pythons} x anyio {$anyios} (lowest = $floor), $jobs at a time, logs in $work/logs"
running=0
for minor in $pythons; do
    for which in $anyios; do
        run_cell "$minor" "$which" &
        running=$((running + 1))
        if [ "$running" -ge "$jobs" ]; then
            wait -n
            running=$((running - 1))
        fi
    done
done
wait

failed=0
printf '\n%-7s %-7s %-8s %-8s %-7s %5s  %s\n' python anyio version trio uvloop secs result
for minor in $pythons; do
    for which in $anyios; do
        line=$(cat "$work/results/py$minor-anyio-$which" 2>/dev/null) \
            || line="$minor $which - - - 99 0 no result"
        read -r m w anyio_v trio_v uvloop_v code secs summary <<<"$line"
        case $code in
            0) status=ok ;;
            77) status=SKIPPED ;;
            *) status="FAILED (exit $code)"; failed=$((failed + 1)) ;;
        esac
        printf '%-7s %-7s %-8s %-8s %-7s %5s  %s: %s\n' "$m" "$w" "$anyio_v" "$trio_v" "$uvloop_v" \
            "$secs" "$status" "$summary"
    done
done
echo "matrix: $failed failed cell(s), $((SECONDS - started))s in all"
[ "$failed" -eq 0 ]
