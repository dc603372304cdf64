//! The reduce of a fit on several processes (docs/scaling.md "Many servers"), timed under
//! `mpirun -n N target/release/mpi-reduce-bench`: per size, the all-reduce of one pass's
//! statistics (`S`, `K x D` float64, plus `m` and counters) over the ranks, and the check that
//! every rank's new centers (`K x D` float32) are rank 0's that follows it, best of 3 each.
//! Built only with the `mpi` feature.

use soft_cluster_core::pass::PassStats;
use soft_cluster_core::ranks::{align_with_rank0, all_reduce_stats};
use std::time::Instant;

fn main() {
    let world = soft_cluster_core::world::processes().unwrap_or_else(|e| {
        eprintln!("mpi-reduce-bench: {e}");
        std::process::exit(1)
    });
    for (k, d) in [(1024, 768), (4096, 4096), (16384, 4096)] {
        let (mut best, mut centers) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let mut data = vec![1.5f32; k * d];
            let started = Instant::now();
            let crossed = align_with_rank0(world, &mut data).expect("centers check");
            centers = centers.min(started.elapsed().as_secs_f64());
            assert!(!crossed, "equal centers stay where they are");
            let mut stats = PassStats::new(k, d);
            stats.s.iter_mut().enumerate().for_each(|(i, v)| *v = (i + world.rank()) as f64);
            let started = Instant::now();
            all_reduce_stats(&mut stats, world).expect("all-reduce");
            best = best.min(started.elapsed().as_secs_f64());
            assert_eq!(stats.s[1], (world.size() * (world.size() + 1) / 2) as f64, "the sum over ranks");
        }
        if world.rank() == 0 {
            println!("ranks {} K {k} D {d} S {} MiB all-reduce {best:.3} s, centers check {centers:.3} s", world.size(), k * d * 8 >> 20);
        }
    }
}
