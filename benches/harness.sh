#!/usr/bin/env bash
# Makes (or brings up to date) the benchmark's own Python environment -- numpy with OpenBLAS, FAISS,
# scikit-learn, matplotlib, pinned -- and runs benches/harness.py run (`npm run bench`).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
ensure_pins numpy==2.4.6 faiss-cpu==1.15.1 scikit-learn==1.9.1 matplotlib==3.11.2
exec "$here/.venv/bin/python" "$here/harness.py" run "$@"
