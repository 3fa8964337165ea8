#!/usr/bin/env bash
# The sdist is what users build from when no wheel fits: build it, check its
# metadata and the wheel built from it (twine check, the licence inside both),
# unpack it somewhere else, install it (not editable) in a fresh venv, and run
# the fast part of the suite from the unpacked tree.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${1:-$root/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/scopetrace-sdist.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" -m build --sdist --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/scopetrace-*.tar.gz)
tar xzf "$sdist" -C "$work"
tree=$(ls -d "$work"/scopetrace-*/)
"$python" -m build --wheel --outdir "$work/dist" "$tree" >"$work/wheel.log" 2>&1 \
    || { cat "$work/wheel.log"; exit 1; }
wheel=$(ls "$work"/dist/scopetrace-*.whl)
"$python" -m twine check --strict "$sdist" "$wheel"
in_wheel=$("$python" -m zipfile -l "$wheel")
in_sdist=$(tar tzf "$sdist")
for file in LICENSE scopetrace/known_bugs.json scopetrace/py.typed; do
    grep -q "$file" <<<"$in_wheel" || { echo "sdist-tests: no $file in the wheel" >&2; exit 1; }
done
for file in LICENSE tests/conftest.py tests/scenarios.py tests/programs.py tests/wheelenv.py \
        tests/otlp_receiver.py .ci/run; do
    grep -q "/$file\$" <<<"$in_sdist" || { echo "sdist-tests: no $file in the sdist" >&2; exit 1; }
done

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "${tree}[test]"
# From the unpacked tree, but against the installed package: the tree's src/
# is not on the path, the venv's site-packages is.
cd "$tree"
"$work/venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider \
    --import-mode=importlib -o testpaths=tests
echo "sdist-tests: the suite passed from $(basename "$sdist")"
