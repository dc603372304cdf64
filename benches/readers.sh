#!/usr/bin/env bash
# `npm run bench:readers`: read + decode throughput of our chunk readers against numpy,
# safetensors and datasets on the same files (benches/readers.py). GIB (default 0.5) sizes them.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
ensure_pins numpy==2.4.6 safetensors==0.8.0 datasets==4.4.1
cargo build --release -q -p soft-cluster-core --bin read-bench --bin fit-bench
exec "$here/.venv/bin/python" "$here/readers.py" "$here/../target/release/read-bench" "$here/../target/release/fit-bench" "$@"
