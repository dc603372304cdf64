//! Kernel benchmark: the membership step and the fit pass of the CPU backend on the data that
//! `benches/kernel.py` wrote (the same data its numpy version runs on), plus a large SGEMM for
//! the machine's peak. Prints one JSON object per measurement on stdout.
//!
//! Usage: cargo bench --bench kernel -- DATA_DIR K [K...]

use soft_cluster_core::kernels::cpu::{CpuBackend, GemmCrate};
use soft_cluster_core::npz::read_npy_f32;
use soft_cluster_core::{ActivationsRef, Backend, Centers, MembershipParams, Tokens, Want};
use std::path::Path;
use std::time::Instant;

const REPEATS: usize = 5;

fn best_of<F: FnMut()>(mut f: F) -> f64 {
    f(); // warm-up: page faults, thread pool start
    (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn sgemm_peak() {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let secs = best_of(|| unsafe {
        gemm::gemm(n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize, b.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(threads))
    });
    println!("{{\"impl\":\"gemm-crate\",\"op\":\"sgemm_peak\",\"n\":{n},\"seconds\":{secs},\"gflops\":{}}}", 2.0 * (n * n * n) as f64 / secs / 1e9);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let dir = Path::new(args.first().expect("usage: kernel DATA_DIR K [K...]"));
    let ks: Vec<usize> = args[1..].iter().map(|k| k.parse().expect("K")).collect();
    let (shape, x) = read_npy_f32(&dir.join("x.npy")).expect("x.npy");
    let (n, d) = (shape[0], shape[1]);
    let params = MembershipParams { temperature: 0.1, min_membership: 0.01 };
    sgemm_peak();
    for &k in &ks {
        let (cshape, c) = read_npy_f32(&dir.join(format!("centers_{k}.npy"))).expect("centers");
        assert_eq!(cshape, vec![k, d]);
        let centers = Centers::from_rows(k, d, c).unwrap();
        let tokens = Tokens { source: "x.npy", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&x), seq_len: n, d, mask: None };
        let block_rows: Vec<usize> = std::env::var("BLOCK_ROWS").map_or(vec![soft_cluster_core::kernels::cpu::BLOCK_ROWS], |v| v.split(',').map(|b| b.parse().unwrap()).collect());
        for (gemm, block_rows) in [GemmCrate::Gemm, GemmCrate::MatrixMultiply].into_iter().flat_map(|g| block_rows.iter().map(move |&b| (g, b))) {
            let backend = CpuBackend { gemm, block_rows };
            for (op, want, gemms) in [
                ("memberships", Want { sparse: true, ..Want::default() }, 1.0),
                ("fit_pass", Want { stats: true, sums: true, ..Want::default() }, 2.0),
            ] {
                let mut nnz = 0;
                let secs = best_of(|| {
                    let out = backend.run(&centers, &tokens, params, want).unwrap();
                    nnz = out.sparse.map_or(0, |s| s.nnz());
                });
                let flops = gemms * 2.0 * (n * k * d) as f64;
                println!(
                    "{{\"impl\":\"rust-{}\",\"block_rows\":{block_rows},\"op\":\"{op}\",\"n\":{n},\"d\":{d},\"k\":{k},\"seconds\":{secs},\"tokens_per_s\":{},\"gflops\":{},\"nnz\":{nnz}}}",
                    match gemm { GemmCrate::Gemm => "gemm", GemmCrate::MatrixMultiply => "matrixmultiply" },
                    n as f64 / secs,
                    flops / secs / 1e9
                );
            }
        }
    }
}
