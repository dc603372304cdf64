//! Times `read_chunk` and `prepare_rows` on one chunk file, three times (the first read may
//! come from disk, the others from the page cache): `cargo run --release -p soft-cluster-core
//! --example read_time -- CHUNK.npz`. What the fit's reader thread must keep up with.
use std::time::Instant;
fn main() {
    let p = std::env::args().nth(1).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let c = soft_cluster_core::read_chunk(p.as_ref()).unwrap();
        let t1 = t.elapsed();
        let tokens = soft_cluster_core::Tokens::from_chunk(&c, 0);
        let t2 = Instant::now();
        let rows = soft_cluster_core::kernels::prepare_rows(&tokens).unwrap();
        println!("read {:?} prepare {:?} rows {}", t1, t2.elapsed(), rows.len());
    }
}
