//! `fit-bench`: runs `fit_chunks` on the CPU backend over a folder of chunks and prints one JSON
//! line, for `benches/fit.py` (which measures its wall time and peak memory as a process).
//!
//!     fit-bench --chunks DIR --init FILE --clusters K --iterations N --temperature T
//!               --min-membership M --out OUTDIR

use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::npz::read_npy_f32;
use soft_cluster_core::{Centers, ClusteringConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts: HashMap<&str, &str> = args.chunks(2).map(|p| (p[0].trim_start_matches("--"), p.get(1).map_or("", |s| s.as_str()))).collect();
    let get = |name: &str| *opts.get(name).unwrap_or_else(|| panic!("missing --{name}"));
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(get("chunks"))
        .expect("--chunks DIR")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "npz"))
        .collect();
    chunks.sort();
    let (shape, data) = read_npy_f32(get("init").as_ref()).expect("--init FILE");
    let k: usize = get("clusters").parse().unwrap();
    assert_eq!(shape[0], k, "--init holds {} centers", shape[0]);
    let mut config = ClusteringConfig::new(k, shape[1]);
    config.n_iterations = get("iterations").parse().unwrap();
    config.temperature = get("temperature").parse().unwrap();
    config.min_membership = get("min-membership").parse().unwrap();
    config.tol = 0.0;
    let out = PathBuf::from(get("out"));
    let started = Instant::now();
    let request = FitRequest { config: &config, initial_centers: Some(Centers::from_rows(k, shape[1], data).unwrap()), chunks: &chunks, output_dir: &out };
    let model = fit_chunks(request, &CpuBackend::default(), &mut |_| {}).unwrap_or_else(|e| {
        eprintln!("fit-bench: {e}");
        std::process::exit(1)
    });
    let seconds = started.elapsed().as_secs_f64();
    let tokens: u64 = model.cluster_count.iter().sum();
    println!(
        "{{\"impl\":\"rust-cpu\",\"seconds\":{seconds},\"iterations\":{},\"tokens\":{tokens},\"tokens_per_s\":{}}}",
        config.n_iterations,
        tokens as f64 * (config.n_iterations + 1) as f64 / seconds
    );
}
