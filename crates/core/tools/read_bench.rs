//! Read + decode throughput of the chunk readers (`npm run bench:readers`, benches/readers.py):
//! reads each file given through `sources::blocks` (as a fit does) and prints one JSON line per
//! file with the best of `--repeat` runs.
//!
//!     read-bench [--repeat N] FILE...

use soft_cluster_core::sources::{blocks, BLOCK_BYTES};
use std::time::Instant;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut repeat = 3;
    if args.first().is_some_and(|a| a == "--repeat") {
        repeat = args[1].parse().expect("--repeat N");
        args.drain(..2);
    }
    for file in &args {
        let path = std::path::Path::new(file);
        let mut best = f64::INFINITY;
        let mut bytes = 0usize;
        let mut dtype = "";
        for _ in 0..repeat {
            let started = Instant::now();
            bytes = 0;
            for block in blocks(path, BLOCK_BYTES).unwrap_or_else(|e| panic!("{e}")) {
                let block = block.unwrap_or_else(|e| panic!("{e}"));
                bytes += block.activations.len() * block.activations.element_bytes();
                dtype = block.activations.dtype();
                std::hint::black_box(&block);
            }
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!("{}", serde_json::json!({"file": file, "dtype": dtype, "bytes": bytes, "seconds": best}));
    }
}
