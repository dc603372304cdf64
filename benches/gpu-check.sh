#!/usr/bin/env bash
# ONE prepared command for a machine with an NVIDIA GPU (the device machine has no registries and
# no Node.js): runs the CUDA parity tests and times the CUDA backend against the design document's
# algorithm in PyTorch, on the same data in the same run.
#
# Build here first (x86-64): `benches/gpu-check.sh --build` compiles the test and bench binaries
# in release mode and copies them into .gpu/ (ignored by git, carried to the device). Then, on
# the device: `benches/gpu-check.sh` (results under $OUT, or /tmp/gpu-check when unset).
# Needs python3 with torch and numpy there; finds libcublas and libnvrtc itself.
# GPU_CHECK_QUICK=1 skips the PyTorch fit's output pass (minutes of np.savez_compressed).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
  set -e
  mkdir -p .gpu
  cargo build --release -p soft-cluster-core --bin fit-bench --bin gpu-fused-bench
  cp target/release/fit-bench target/release/gpu-fused-bench .gpu/
  for t in cuda lib; do
    if [ $t = lib ]; then sel=(--lib); else sel=(--test $t); fi
    exe=$(cargo test --release -p soft-cluster-core "${sel[@]}" --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
    cp "$exe" ".gpu/test-$t"
  done
  strip .gpu/* 2>/dev/null || true
  ls -la .gpu
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
BIN=.gpu
DATA=${GPU_CHECK_DATA:-/tmp/gpu-check-data}
started=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
# The CUDA libraries soft-cluster loads at run time: the toolkit's or pip's (torch's venv) copies.
libdirs=$(find /usr/local /opt /usr/lib -name 'libcublas.so.1[0-9]*' -o -name 'libnvrtc.so.1[0-9]*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export SOFT_CLUSTER_REQUIRE_GPU=1 SOFT_CLUSTER_REQUIRE_NVRTC=1 SOFT_CLUSTER_FIXTURES="$PWD/fixtures" RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-16}
status=0

echo "== parity tests"
$BIN/test-cuda --test-threads=1 --nocapture 2>&1 | tee "$OUT/parity.log" | grep -E '^test |result|SKIPPED|TF32|panicked|error' || true
grep -q 'test result: ok' "$OUT/parity.log" || status=1
$BIN/test-lib kernels::cuda --nocapture 2>&1 | tee -a "$OUT/parity.log" | grep -E '^test |result' || true
echo "parity: $([ $status = 0 ] && echo PASSED || echo FAILED) after $(( $(date +%s) - started )) s"

echo "== fused step (device time, 16384 rows of float16, T = 0.1, min 0.01)"
: > "$OUT/fused.jsonl"
for dk in "768 1024" "768 4096" "4096 1024" "4096 4096"; do
  set -- $dk
  for prec in float32 tf32; do
    $BIN/gpu-fused-bench --rows 16384 --clusters $2 --dim $1 --precision $prec >> "$OUT/fused.jsonl" || status=1
    python3 benches/gpu_torch.py fused --rows 16384 --clusters $2 --dim $1 $([ $prec = tf32 ] && echo --tf32) >> "$OUT/fused.jsonl" || status=1
  done
done

echo "== fused step at T = 0.01, float32 (the float64 finish that \"auto\" temperatures on real activations take; on these random rows every cosine is inside its window, the worst case)"
: > "$OUT/fused_tiny.jsonl"
for dk in "768 1024" "4096 4096"; do
  set -- $dk
  $BIN/gpu-fused-bench --rows 16384 --clusters $2 --dim $1 --precision float32 --temperature 0.01 >> "$OUT/fused_tiny.jsonl" || status=1
done

echo "== end-to-end fit (4 chunks of 64 x 256 float16 tokens with padding, 3 iterations + output pass)"
: > "$OUT/fit.jsonl"
for dk in "768 1024" "4096 4096"; do
  set -- $dk
  dir="$DATA/d$1-k$2"
  python3 benches/gpu_torch.py gen "$dir" --dim $1 --clusters $2 > /dev/null || status=1
  cat "$dir"/*.npz > /dev/null  # both readers start from the page cache
  for prec in float32 tf32; do
    rm -rf "$DATA/out"
    python3 benches/gpu_torch.py fit "$dir" --clusters $2 --iterations 3 --out "$DATA/out" $([ $prec = tf32 ] && echo --tf32) \
      $([ -n "${GPU_CHECK_QUICK:-}" ] && echo --skip-output) \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(d=$1,k=$2); print(json.dumps(r))" >> "$OUT/fit.jsonl" || status=1
    rm -rf "$DATA/out"
    echo "# d=$1 k=$2 $prec" >> "$OUT/profile.log"
    SOFT_CLUSTER_PROFILE=1 $BIN/fit-bench --chunks "$dir" --init "$dir/init.npy" --clusters $2 --iterations 3 --temperature 0.1 --min-membership 0.01 \
      --out "$DATA/out" --device cuda --precision $prec 2>>"$OUT/profile.log" \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(d=$1,k=$2); print(json.dumps(r))" >> "$OUT/fit.jsonl" || status=1
  done
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "fused.jsonl")) if l.strip()]
print("fused step: D K precision | soft-cluster ms (TFLOP/s) | pytorch ms (TFLOP/s) | speedup")
for i in range(0, len(rows) - 1, 2):
    a, b = rows[i], rows[i + 1]
    print(f"  {a['d']:5} {a['k']:5} {a['precision']:8} | {a['median_ms']:8.3f} ({a['matmul_tflops']:6.1f}) | {b['median_ms']:8.3f} ({b['matmul_tflops']:6.1f}) | {b['median_ms']/a['median_ms']:.2f}x")
for r in (json.loads(l) for l in open(os.path.join(out, "fused_tiny.jsonl")) if l.strip()):
    print(f"  T = 0.01: {r['d']:5} {r['k']:5} {r['precision']:8} | {r['median_ms']:8.3f} ms")
rows = [json.loads(l) for l in open(os.path.join(out, "fit.jsonl")) if l.strip()]
print("fit: D K precision | mean of iterations 2-3: soft-cluster s | pytorch s | speedup || whole run: soft-cluster s | pytorch s (output pass s)")
for i in range(0, len(rows) - 1, 2):
    t, s = rows[i], rows[i + 1]
    it_s, it_t = sum(s['iteration_seconds'][1:]) / 2, sum(t['iteration_seconds'][1:]) / 2
    print(f"  {s['d']:5} {s['k']:5} {s['precision']:8} | {it_s:7.3f} | {it_t:7.3f} | {it_t/it_s:.2f}x || {s['seconds']:7.2f} | {t['seconds']:7.2f} ({t.get('output_seconds')})")
PY
echo "gpu-check: $([ $status = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - started )) s"
exit $status
