#!/usr/bin/env bash
# Packaging check (issue 14, check 4): build the wheel with `python -m build`, install it into a fresh venv
# (no Makefile, no source tree on the path), and run `simclr --version` and `simclr demo --epochs 1` from there.
# torch is pinned to the CPU build (an unpinned torch pulls the CUDA packages). A few minutes; needs the
# package index (or its local mirror) for the dependencies. WHEEL_TESTS=1 also runs the fast tier of tests/ against
# the installed wheel (the package imported from the venv, not from src/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN/python" -m build --wheel --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/simclr-*.whl)
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "torch==2.13.0" "$WHEEL"
cd "$WORK"  # away from the source tree: only the installed package can answer
"$WORK/venv/bin/simclr" --version
"$WORK/venv/bin/simclr" demo --epochs 1 --out "$WORK/demo" | tail -1
"$WORK/venv/bin/simclr" ablate nonexistent --train-data x --test-data y --out z 2>&1 | tail -1 || true
if [ "${WHEEL_TESTS:-0}" = 1 ]; then
  # the suite against the installed wheel: tests/ of this checkout, the package from the venv (not src/)
  "$WORK/venv/bin/pip" install -q "$WHEEL[test]"
  # (pytest's default import mode puts each test's folder on sys.path, never src/)
  cd "$OLDPWD" && "$WORK/venv/bin/python" -m pytest tests -q -n 2 -m "not slow" -p no:cacheprovider | tail -3
  "$WORK/venv/bin/python" -c "import simclr, sys; assert '/src/' not in simclr.__file__, simclr.__file__; print('tested', simclr.__file__)"
fi
echo "wheel check passed: $(basename "$WHEEL")"
