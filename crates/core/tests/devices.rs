//! Several devices in one process (`kernels::multi::MultiBackend`, `device: "cuda:all"`): the
//! orchestration is generic over backends, so here it runs 2 and 3 CPU backends, and a fit on
//! them must give the single-backend fit: centers within 1e-6 (cosine), memberships within 1e-5,
//! the same exemplars and quantile examples, the same history apart from timings.

mod common;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::kernels::multi::MultiBackend;
use soft_cluster_core::kernels::{Backend, Centers, MembershipParams, Tokens, Want};
use soft_cluster_core::{ClusteringConfig, Model};
use std::path::{Path, PathBuf};

fn minilm() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/minilm");
    ["minilm_000.npz", "minilm_001.npz", "minilm_002.npz"].iter().map(|n| dir.join(n)).collect()
}

/// A CPU backend that counts the tokens it was given: the devices must share the work.
struct Counting(CpuBackend, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Backend for Counting {
    fn name(&self) -> String {
        self.0.name()
    }
    fn run(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> soft_cluster_core::Result<soft_cluster_core::kernels::PassOutput> {
        self.1.fetch_add(tokens.n_tokens(), std::sync::atomic::Ordering::Relaxed);
        self.0.run(centers, tokens, params, want)
    }
    fn cosines(&self, rows: &[f32], others: &[f32], d: usize) -> soft_cluster_core::Result<Vec<f32>> {
        self.0.cosines(rows, others, d)
    }
    fn host_bytes_for_pass(&self, k: usize, d: usize) -> f64 {
        self.0.host_bytes_for_pass(k, d)
    }
}

#[test]
fn every_device_takes_a_share_of_every_pass() {
    let counts: Vec<_> = (0..3).map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0))).collect();
    let backend = MultiBackend::new(counts.iter().map(|c| Box::new(Counting(CpuBackend::default(), c.clone())) as Box<dyn Backend>).collect());
    let dir = tempfile::tempdir().unwrap();
    fit(&backend, dir.path());
    let seen: Vec<usize> = counts.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect();
    // 4 iterations and the output pass over the three chunks: each device saw about a third.
    let total: usize = seen.iter().sum();
    assert!(seen.iter().all(|&n| n * 4 > total), "{seen:?}");
}

fn cpus(n: usize) -> MultiBackend {
    MultiBackend::new((0..n).map(|_| Box::new(CpuBackend::default()) as Box<dyn Backend>).collect())
}

fn fit(backend: &dyn Backend, out: &Path) -> Model {
    let mut config = ClusteringConfig::new(16, 384);
    config.n_iterations = 4;
    config.tol = 0.0;
    let chunks = minilm();
    fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &chunks, output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, backend, &mut |_| {}).unwrap()
}

#[test]
fn a_fit_on_two_or_three_backends_is_the_single_backend_fit() {
    let one_dir = tempfile::tempdir().unwrap();
    let one = fit(&CpuBackend::default(), one_dir.path());
    for n in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let backend = cpus(n);
        assert_eq!(backend.name(), vec!["cpu"; n].join("+"));
        let many = fit(&backend, dir.path());
        common::assert_same_fit(&one, one_dir.path(), &many, dir.path(), &minilm(), &format!("{n} backends"));
    }
}

#[test]
fn a_run_on_several_backends_joins_rows_in_order() {
    // A batch of 7 sequences dealt over 3 devices, padding and zero rows included: the joined
    // output is the single device's, row for row, and so are the statistics.
    let (b, s, d, k) = (7, 5, 8, 4);
    let acts: Vec<f32> = (0..b * s * d).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).map(|v| if v.abs() < 0.02 { 0.0 } else { v }).collect();
    let mut acts = acts;
    acts[3 * d..4 * d].iter_mut().for_each(|v| *v = 0.0); // an all-zero token: skipped
    let mask: Vec<u8> = (0..b * s).map(|t| u8::from(t % 6 != 5)).collect();
    let centers = Centers::from_rows(k, d, common::unit_rows(k, d, 3)).unwrap();
    let mut config = ClusteringConfig::new(k, d);
    config.temperature = soft_cluster_core::Temperature::Fixed(0.2);
    let params = MembershipParams::try_from(&config).unwrap();
    let tokens = Tokens { source: "t", chunk_index: 2, first_row: 10, activations: soft_cluster_core::chunk::ActivationsRef::F32(&acts), seq_len: s, d, mask: Some(&mask) };
    let want = Want { dense: true, sparse: true, stats: true, sums: true };
    let one = CpuBackend::default().run(&centers, &tokens, params, want).unwrap();
    let many = cpus(3).run(&centers, &tokens, params, want).unwrap();
    assert_eq!(many.rows.token, one.rows.token);
    assert_eq!(many.rows.skipped, one.rows.skipped);
    assert_eq!(many.sparse, one.sparse);
    assert_eq!(many.dense, one.dense);
    let (x, y) = (one.stats.unwrap(), many.stats.unwrap());
    assert_eq!((x.n_rows, x.skipped, &x.hard_count), (y.n_rows, y.skipped, &y.hard_count));
    assert_eq!(x.farthest.iter().map(|f| (f.chunk, f.token)).collect::<Vec<_>>(), y.farthest.iter().map(|f| (f.chunk, f.token)).collect::<Vec<_>>());
    x.s.iter().zip(&y.s).for_each(|(a, b)| common::close(*a, *b, 1e-6, "S (float32 blocks summed in float64)"));
    // Cosines too (init's k-means++ computes with them).
    let rows = common::unit_rows(11, d, 5);
    assert_eq!(cpus(3).cosines(&rows, &centers.data, d).unwrap(), CpuBackend::default().cosines(&rows, &centers.data, d).unwrap());
}

/// The host-side reduce of docs/scaling.md: merging one device's pass statistics (`S`, `K x D`
/// float64) into another's. Run with `cargo test --release --test devices -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (about 1 GiB of memory), not a check"]
fn measure_the_host_reduce() {
    use soft_cluster_core::pass::PassStats;
    for (k, d) in [(1024, 768), (4096, 4096), (16384, 4096)] {
        let mut a = PassStats::new(k, d);
        let mut b = PassStats::new(k, d);
        a.s.iter_mut().enumerate().for_each(|(i, v)| *v = i as f64);
        b.s.iter_mut().enumerate().for_each(|(i, v)| *v = 1.0 / (1.0 + i as f64));
        let started = std::time::Instant::now();
        a.merge(b);
        let seconds = started.elapsed().as_secs_f64();
        println!("merge of K = {k}, D = {d} ({} MiB of S): {seconds:.3} s", k * d * 8 >> 20);
        assert!(a.s[1] > 1.0);
    }
}
