#!/usr/bin/env bash
# Build the documentation site into a temporary folder and look at it in a real browser: PNG
# screenshots of the home page and one method page, taken with headless Chromium.
#   scripts/check-docs.sh [OUTDIR]     screenshots go to OUTDIR (default: a new temporary folder)
# Needs the docs extra (scripts/setup.sh --test, or pip install -e '.[docs]') and Chromium
# (on Debian: apt-get install -y chromium). Not part of CI: tests/test_docs.py builds the site there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}
PY=${PY:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$CHROMIUM" ]; then
  echo "check-docs: no Chromium found; install it (Debian: apt-get install -y chromium) or set CHROMIUM=/path" >&2
  exit 1
fi
out=${1:-$(mktemp -d -t diffrep-docs-XXXXXX)}
mkdir -p "$out"
site=$(mktemp -d -t diffrep-site-XXXXXX)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet -d "$site"
shoot() {   # page (relative to the site), picture name
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1600 \
    --screenshot="$out/$2" "file://$site/$1" >/dev/null 2>&1
  echo "$out/$2"
}
shoot index.html home.png
shoot methods/ddae.html method-ddae.png
shoot results.html results.png
shoot api/core.html api-core.png
