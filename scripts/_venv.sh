# Sourced by scripts/run and scripts/test: create ./.venv and install $REQUIREMENTS (default requirements.txt) when
# it or what it includes changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GSTRATUM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
REQUIREMENTS="${REQUIREMENTS:-requirements.txt}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.requirements-$(basename "$REQUIREMENTS" .txt).sha256"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/$REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/$REQUIREMENTS"
    echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
