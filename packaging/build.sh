#!/usr/bin/env bash
# Build the one-folder FT Studio bundle: dist/ftstudio/ftstudio (run from anywhere; paths are the repo's).
#
# The bundle is built from a clean virtual environment made here, so nothing from a developer's
# environment (a second Qt binding, test tools, an editable install) leaks into it.
#
#   bash packaging/build.sh                 # CPU build (torch 2.13.0 CPU wheel), about 0.9 GB
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash packaging/build.sh   # CUDA build, about 4-5 GB
#
# Environment:
#   FTSTUDIO_BUILD_VENV  where the build venv goes (default /tmp/ftstudio-build-venv; deleted and remade)
#   TORCH_SPEC           the torch requirement (default torch==2.13.0)
#   TORCH_INDEX          an index URL for torch (a CUDA wheel index); default: the configured pip indexes
#   REUSE_VENV=1         keep an existing build venv (faster re-builds while working on the spec)
#   PYTHON               the interpreter that makes the venv (default python3)
#   FTSTUDIO_CONSTRAINTS the tested dependency set the bundle is built from (default packaging/constraints.txt,
#                        the set CI tests; packaging/update-constraints.sh passes a candidate set here)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FTSTUDIO_BUILD_VENV:-/tmp/ftstudio-build-venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="${FTSTUDIO_CONSTRAINTS:-$REPO/packaging/constraints.txt}"
cd "$REPO"
t0=$(date +%s)
say() { printf '[build %4ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

if [[ "${REUSE_VENV:-0}" == 1 && -x "$VENV/bin/python" ]]; then
    say "reusing the build venv $VENV (re-installing the project only)"
    "$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$REPO"
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "$REPO[gguf,package]"
else
    say "making a clean venv in $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # torch first: the project's requirement (torch>=2.4) is then already met by the chosen build.
    if [[ -n "${TORCH_INDEX:-}" ]]; then
        say "installing $TORCH_SPEC from $TORCH_INDEX"
        "$VENV/bin/pip" install --quiet --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    else
        say "installing $TORCH_SPEC"
        "$VENV/bin/pip" install --quiet "$TORCH_SPEC"
    fi
    say "installing the project and PyInstaller (the tested set: $CONSTRAINTS)"
    # A non-editable install: the bundle gets a copy of the package, not a link to this checkout.
    # [gguf]: the bundle can open .gguf files (a small pure-Python reader); [package]: PyInstaller.
    "$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "$REPO[gguf,package]"
fi

# One Qt binding only: PyInstaller refuses to bundle two, and pyqtgraph would pick the wrong one.
"$VENV/bin/python" - <<'EOF'
import importlib.util, sys
others = [m for m in ("PyQt5", "PyQt6", "PySide2") if importlib.util.find_spec(m)]
if others:
    sys.exit(f"build: more Qt bindings than PySide6 in the build venv: {others}; remove them")
import torch
print(f"build: torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
EOF

say "running PyInstaller"
rm -rf "$REPO/build/ftstudio" "$REPO/dist/ftstudio"
"$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$REPO/dist" --workpath "$REPO/build" "$REPO/packaging/ftstudio.spec"

# The desktop entry, its icon and the script that installs them travel with the folder.
cp "$REPO/packaging/ftstudio.desktop" "$REPO/packaging/install-desktop-entry.sh" "$REPO/dist/ftstudio/"
cp "$REPO/resources/icons/ftstudio.svg" "$REPO/dist/ftstudio/ftstudio.svg"
chmod +x "$REPO/dist/ftstudio/install-desktop-entry.sh"

say "built $REPO/dist/ftstudio/ftstudio ($(du -sh "$REPO/dist/ftstudio" | cut -f1))"
say "self-test: env -i HOME=/tmp QT_QPA_PLATFORM=offscreen $REPO/dist/ftstudio/ftstudio --self-test"
