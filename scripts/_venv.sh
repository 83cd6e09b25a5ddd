# Shared by scripts/sandbox and scripts/test: create .venv (if missing) and install the project.
# Re-installs only when pyproject.toml changed (a stamp file keeps its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CAMPAIGND_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

find_python() {
  for cand in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "campaignd needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
  PY="$(find_python)"
  echo "==> creating virtualenv $VENV ($("$PY" --version))" >&2
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV"; then
    echo "cannot create a virtualenv with $PY: install its venv module (Debian: apt-get install python3-venv)" >&2
    rm -rf "$VENV"
    exit 1
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
STAMP="$VENV/.campaignd-install${EXTRAS:+-$EXTRAS}"
HASH="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ] || ! "$VENV/bin/python" -c 'import campaignd' 2>/dev/null; then
  echo "==> installing campaignd${EXTRAS:+[$EXTRAS]} into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
  echo "$HASH" > "$STAMP"
fi
