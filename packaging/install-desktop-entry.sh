#!/usr/bin/env bash
# Add FT Studio to this user's application menu (and, with --desktop, to the desktop as a double-click icon).
# Run it from the unpacked bundle folder; it points the entry at this folder, wherever it was copied.
#   ./install-desktop-entry.sh [--desktop]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXE="$HERE/ftstudio"
[[ -x "$EXE" ]] || { echo "install-desktop-entry: $EXE not found; run me from the ftstudio bundle folder" >&2; exit 1; }
APPS="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
ICONS="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps"
mkdir -p "$APPS" "$ICONS"
cp "$HERE/ftstudio.svg" "$ICONS/ftstudio.svg"
# Quote the path for the Exec key (the folder may contain spaces).
sed -e "s|^Exec=.*|Exec=\"$EXE\" %F|" -e "s|^Icon=.*|Icon=$ICONS/ftstudio.svg|" -e '/^# install-desktop-entry/d' \
    "$HERE/ftstudio.desktop" > "$APPS/ftstudio.desktop"
chmod +x "$APPS/ftstudio.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$APPS" 2>/dev/null || true
echo "installed $APPS/ftstudio.desktop"
if [[ "${1:-}" == "--desktop" ]]; then
    DESK="$(command -v xdg-user-dir >/dev/null && xdg-user-dir DESKTOP || echo "$HOME/Desktop")"
    mkdir -p "$DESK"
    cp "$APPS/ftstudio.desktop" "$DESK/ftstudio.desktop"
    chmod +x "$DESK/ftstudio.desktop"
    # GNOME asks before launching an untrusted desktop file; mark ours trusted where gio exists.
    command -v gio >/dev/null && gio set "$DESK/ftstudio.desktop" metadata::trusted true 2>/dev/null || true
    echo "installed $DESK/ftstudio.desktop"
fi
