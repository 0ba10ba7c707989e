#!/usr/bin/env bash
# The Debian packages the desktop shell (Tauri 2: WebKitGTK, GTK 3, libsoup 3)
# needs to build; installed with apt when missing (~110 MB, ~60 s on a bare
# machine), a no-op otherwise. Every workspace build needs them, since the
# shell is a workspace member.
set -euo pipefail
PKGS="libwebkit2gtk-4.1-dev libgtk-3-dev libsoup-3.0-dev libjavascriptcoregtk-4.1-dev \
  librsvg2-dev libayatana-appindicator3-dev libxdo-dev build-essential pkg-config file"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> installing the desktop shell's build packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
pkg-config --exists webkit2gtk-4.1 javascriptcoregtk-4.1 libsoup-3.0 gtk+-3.0 \
  || { echo "the desktop shell's system libraries are missing (see scripts/desktop-deps.sh)" >&2; exit 1; }
