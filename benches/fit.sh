#!/usr/bin/env bash
# Makes the benchmark's own Python environment (numpy with OpenBLAS) and runs benches/fit.py run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q numpy==2.4.6
fi
exec "$here/.venv/bin/python" "$here/fit.py" run "$@"
