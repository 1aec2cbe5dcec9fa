#!/usr/bin/env bash
# Move FT Studio's tested dependency set (packaging/constraints.txt) forward, deliberately.
#
# README's two commands, .ci/run and packaging/build.sh all install with `-c packaging/constraints.txt`, so
# CI, the bundle and a user's install run the same versions. New releases reach them only through this script:
#   1. a fresh venv gets torch (TORCH_SPEC, as README pins it) and the project's test and package extras
#      WITHOUT the constraints, i.e. the newest releases pip resolves today;
#   2. the whole test suite runs on that set (README's test command, minus the install);
#   3. the PyInstaller bundle is built from the same set and its --self-test must pass;
#   4. only then is the set written to packaging/constraints.txt (a diff against the old set is printed).
# On any failure the constraints are left as they were, and the failing step and log are named.
#
#   bash packaging/update-constraints.sh            # about 15-25 minutes on 2 cores
#   SKIP_BUNDLE=1 bash packaging/update-constraints.sh   # tests only (the bundle is checked by CI anyway)
#   KEEP=1 ...                                      # keep the venv and logs (default: removed on success)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${FTSTUDIO_UPDATE_DIR:-/tmp/ftstudio-update}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
OUT="$REPO/packaging/constraints.txt"
t0=$(date +%s)
say() { printf '[update %4ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
fail() { say "FAILED: $1 (log: $2); packaging/constraints.txt is unchanged"; exit 1; }

rm -rf "$WORK" && mkdir -p "$WORK"
say "fresh venv in $WORK/venv ($("$PYTHON" --version))"
"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip"
"$PIP" install --quiet --upgrade pip >/dev/null
"$PIP" install --quiet "$TORCH_SPEC" >"$WORK/install.log" 2>&1 || fail "installing $TORCH_SPEC" "$WORK/install.log"
say "installing the newest releases of the project's test and package extras (no constraints)"
"$PIP" install --quiet --upgrade --upgrade-strategy eager "$REPO[test,package]" >>"$WORK/install.log" 2>&1 \
    || fail "installing the newest releases" "$WORK/install.log"
{
    echo "# FT Studio's tested dependency set: the exact versions the test suite and the bundle's self-test passed"
    echo "# with. README's commands, .ci/run and packaging/build.sh install with -c packaging/constraints.txt."
    echo "# torch is not listed: README's commands pin it (torch==2.13.0, a CPU build); a GPU user installs a CUDA"
    echo "# build first. Written by packaging/update-constraints.sh on $(date -u +%Y-%m-%d) with $("$PYTHON" --version)."
    "$PIP" freeze --all --exclude-editable --exclude torch --exclude ftstudio --exclude pip 2>/dev/null | grep -v '^WARNING' | LC_ALL=C sort -f
} >"$WORK/constraints.txt"
say "$(grep -c '==' "$WORK/constraints.txt") pinned distributions; running the tests"
(cd "$REPO" && "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider) >"$WORK/tests.log" 2>&1 \
    || { tail -5 "$WORK/tests.log"; fail "the test suite" "$WORK/tests.log"; }
tail -1 "$WORK/tests.log"
if [[ "${SKIP_BUNDLE:-0}" != 1 ]]; then
    say "building the bundle with the candidate set"
    FTSTUDIO_CONSTRAINTS="$WORK/constraints.txt" FTSTUDIO_BUILD_VENV="$WORK/build-venv" TORCH_SPEC="$TORCH_SPEC" \
        bash "$REPO/packaging/build.sh" >"$WORK/bundle.log" 2>&1 || fail "the bundle build" "$WORK/bundle.log"
    env -i HOME=/tmp QT_QPA_PLATFORM=offscreen "$REPO/dist/ftstudio/ftstudio" --self-test >"$WORK/selftest.log" 2>&1 \
        || { tail -5 "$WORK/selftest.log"; fail "the bundle's self-test" "$WORK/selftest.log"; }
    tail -1 "$WORK/selftest.log"
fi
say "changes to the tested set:"
diff <(grep '==' "$OUT" 2>/dev/null || true) <(grep '==' "$WORK/constraints.txt") || true
cp "$WORK/constraints.txt" "$OUT"
say "wrote $OUT: review the diff, commit it with the test and self-test results in the message"
[[ "${KEEP:-0}" == 1 ]] || rm -rf "$WORK"
