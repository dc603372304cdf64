//! `gpu-fused-bench`: device time of the CUDA backend's fused step (normalize, `X C^T`, the
//! softmax step, `m`, `P^T X`) on one block already on the GPU, for `benches/gpu-check.sh`.
//!
//!     gpu-fused-bench --rows N --clusters K --dim D [--precision float32|tf32] [--temperature T]
//!                     [--min-membership M] [--reps R]
//!
//! Activations are float16 (as researchers dump them), pseudo-random with a cluster structure.
//! Prints one JSON line: median milliseconds per step and the matrix products' TFLOP/s.

use half::f16;
use soft_cluster_core::kernels::cuda::{CudaBackend, MatmulPrecision};
use soft_cluster_core::kernels::{MembershipParams, Tokens};
use soft_cluster_core::{ActivationsRef, Centers};
use std::collections::HashMap;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts: HashMap<&str, &str> = args.chunks(2).map(|p| (p[0].trim_start_matches("--"), p.get(1).map_or("", |s| s.as_str()))).collect();
    let get = |name: &str, default: &str| opts.get(name).copied().unwrap_or(default).to_string();
    let n: usize = get("rows", "16384").parse().unwrap();
    let k: usize = get("clusters", "1024").parse().unwrap();
    let d: usize = get("dim", "768").parse().unwrap();
    let reps: usize = get("reps", "20").parse().unwrap();
    let precision = match get("precision", "float32").as_str() {
        "tf32" => MatmulPrecision::Tf32,
        _ => MatmulPrecision::Float32,
    };
    let params = MembershipParams { temperature: get("temperature", "0.1").parse().unwrap(), min_membership: get("min-membership", "0.01").parse().unwrap() };

    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let centers_raw: Vec<f32> = (0..k * d).map(|_| next()).collect();
    let centers = Centers::from_rows(k, d, centers_raw).unwrap();
    let mut acts = vec![f16::ZERO; n * d];
    for t in 0..n {
        let c = t % k;
        for i in 0..d {
            acts[t * d + i] = f16::from_f32(3.0 * centers.data[c * d + i] * (d as f32).sqrt() * 0.1 + next());
        }
    }
    let tokens = Tokens { source: "bench", chunk_index: 0, first_row: 0, activations: ActivationsRef::F16(&acts), seq_len: n, d, mask: None };
    // All rows in one block, as the PyTorch step computes them.
    let backend = CudaBackend::new(0, precision).map(|b| b.with_block_rows(n)).unwrap_or_else(|e| {
        eprintln!("gpu-fused-bench: {e}");
        std::process::exit(1)
    });
    let t = backend.time_fused_step(&centers, &tokens, params, reps).unwrap_or_else(|e| {
        eprintln!("gpu-fused-bench: {e}");
        std::process::exit(1)
    });
    println!(
        "{}",
        serde_json::json!({
            "impl": "soft-cluster", "device": backend.device_name(), "precision": get("precision", "float32"),
            "rows": t.rows, "k": k, "d": d, "median_ms": t.median_ms,
            "matmul_tflops": t.matmul_flops / (t.median_ms * 1e-3) / 1e12,
        })
    );
}
