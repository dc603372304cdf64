//! `fit-bench`: runs `fit_chunks` on the CPU backend over a folder of chunks (any format `sources`
//! reads) and prints one JSON line, for `benches/fit.py` (which measures its wall time and peak
//! memory as a process) and `benches/readers.py` (fit tokens/s per input format).
//!
//!     fit-bench --chunks DIR [--init FILE | --seed S] --clusters K --iterations N
//!               --temperature T --min-membership M --out OUTDIR [--device cpu|cuda|auto]
//!               [--precision float32|tf32] [--cache auto|off|BYTES]
//!
//! Without `--init` the fit starts from k-means++ with `--seed` (default 0). The JSON line holds
//! the whole run's seconds and tokens/s and the seconds of each iteration's pass.

use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::backend_for;
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
        .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| soft_cluster_core::sources::CHUNK_EXTENSIONS.contains(&x)))
        .collect();
    chunks.sort();
    let k: usize = get("clusters").parse().unwrap();
    let init = opts.get("init").map(|path| {
        let (shape, data) = read_npy_f32(path.as_ref()).expect("--init FILE");
        assert_eq!(shape[0], k, "--init holds {} centers", shape[0]);
        Centers::from_rows(k, shape[1], data).unwrap()
    });
    let d = match &init {
        Some(c) => c.d,
        None => soft_cluster_core::read_chunk(&chunks[0]).expect("first chunk").d_model,
    };
    let mut config = ClusteringConfig::new(k, d);
    config.seed = opts.get("seed").map_or(0, |s| s.parse().unwrap());
    config.n_iterations = get("iterations").parse().unwrap();
    config.temperature = get("temperature").parse().unwrap();
    config.min_membership = get("min-membership").parse().unwrap();
    config.tol = 0.0;
    config.device = opts.get("device").unwrap_or(&"cpu").parse().unwrap();
    config.precision = opts.get("precision").unwrap_or(&"float32").parse().unwrap();
    config.cache = opts.get("cache").unwrap_or(&"auto").parse().unwrap();
    let backend = backend_for(&config).unwrap_or_else(|e| {
        eprintln!("fit-bench: {e}");
        std::process::exit(1)
    });
    let out = PathBuf::from(get("out"));
    let started = Instant::now();
    let request = FitRequest { config: &config, initial_centers: init, chunks: &chunks, output_dir: &out, resume: false, overwrite: true, device: None, ranks: &soft_cluster_core::ranks::OneProcess };
    let model = fit_chunks(request, backend.as_ref(), &mut |_| {}).unwrap_or_else(|e| {
        eprintln!("fit-bench: {e}");
        std::process::exit(1)
    });
    let seconds = started.elapsed().as_secs_f64();
    let tokens: u64 = model.cluster_count.iter().sum();
    let per_iteration: Vec<f64> = model.history.iter().map(|h| h.seconds).collect();
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("rust-{}", backend.name()),
            "precision": config.precision.to_string(),
            "seconds": seconds,
            "iterations": model.history.len(),
            "tokens": tokens,
            "tokens_per_s": tokens as f64 * (model.history.len() + 1) as f64 / seconds,
            "iteration_seconds": per_iteration,
            "objective": model.history.last().map(|h| h.objective),
        })
    );
}
