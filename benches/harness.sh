#!/usr/bin/env bash
# Makes (or brings up to date) the benchmark's own Python environment -- numpy with OpenBLAS, FAISS,
# scikit-learn, matplotlib, pinned -- and runs benches/harness.py run (`npm run bench`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pins=(numpy==2.4.6 faiss-cpu==1.15.1 scikit-learn==1.9.1 matplotlib==3.11.2)
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
fi
# Installs only when a pin is missing or at another version (fit.sh and kernel.sh share this venv).
if ! "$here/.venv/bin/python" - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  "$here/.venv/bin/pip" install -q "${pins[@]}"
fi
exec "$here/.venv/bin/python" "$here/harness.py" run "$@"
