//! The CUDA backend against the CPU backend: memberships within 1e-4, pass statistics, a whole
//! fit (centers within 1e-5 in cosine, same exemplars), TF32's error. On machines without a GPU
//! the parity tests skip and say so (unless SOFT_CLUSTER_REQUIRE_GPU=1, as benches/gpu-check.sh
//! sets); the device-selection tests run everywhere.

mod common;
use common::*;
use half::f16;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::kernels::cuda::{CudaBackend, MatmulPrecision};
use soft_cluster_core::kernels::{backend_for, Backend, MembershipParams, PassOutput, Tokens, Want};
use soft_cluster_core::npz::read_npy_f32;
use soft_cluster_core::ActivationsRef;
use soft_cluster_core::{Centers, ClusteringConfig, Device, Error, Model};
use std::path::{Path, PathBuf};

/// GPU 0, or `None` after saying on stderr that `test` is skipped. Written straight to stderr,
/// not through `eprintln!`, which the test harness captures and only shows for failing tests:
/// a plain `cargo test` run shows the skip line too. With SOFT_CLUSTER_REQUIRE_GPU=1 a missing GPU
/// fails the test instead.
fn gpu(test: &str, precision: MatmulPrecision) -> Option<CudaBackend> {
    use std::io::Write;
    match CudaBackend::new(0, precision) {
        Ok(b) => Some(b),
        Err(e) => {
            let required = std::env::var("SOFT_CLUSTER_REQUIRE_GPU").as_deref() == Ok("1");
            assert!(!required, "{test}: SOFT_CLUSTER_REQUIRE_GPU=1 but there is no usable GPU: {e}");
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no usable GPU here, nothing was compared ({e}); SOFT_CLUSTER_REQUIRE_GPU=1 makes this a failure");
            None
        }
    }
}

#[test]
fn device_selection_never_panics() {
    let mut config = ClusteringConfig::new(2, 4);
    let gpu_here = CudaBackend::new(0, MatmulPrecision::Float32).is_ok();
    config.device = Device::Auto;
    assert_eq!(backend_for(&config).unwrap().name(), if gpu_here { "cuda:0" } else { "cpu" });
    config.device = Device::Cpu;
    assert_eq!(backend_for(&config).unwrap().name(), "cpu");
    config.device = Device::Cuda(999);
    match backend_for(&config) {
        Err(e @ Error::Device { .. }) => {
            assert_eq!(e.code(), "ERR_DEVICE");
            assert!(e.to_string().contains("cuda:999"), "{e}");
        }
        Err(e) => panic!("expected ERR_DEVICE, got {e}"),
        Ok(_) => panic!("cuda:999 exists?"),
    }
    if !gpu_here {
        config.device = Device::Cuda(0);
        let e = backend_for(&config).err().expect("no GPU here, so cuda must fail");
        assert_eq!(e.code(), "ERR_DEVICE");
        eprintln!("without a GPU, device \"cuda\" says: {e}");
    }
}

/// Deterministic pseudo-random activations with clusters, norms over two orders of magnitude,
/// some all-zero rows and padding.
struct Data {
    acts: Vec<f32>,
    mask: Vec<u8>,
    seq_len: usize,
    d: usize,
}

fn data(n: usize, seq_len: usize, d: usize, k: usize, seed: u64) -> Data {
    let dirs = unit_rows(k, d, seed);
    let noise = unit_rows(n, d, seed + 1);
    let mut acts = vec![0f32; n * d];
    let mut mask = vec![1u8; n];
    for t in 0..n {
        let c = (t * 7 + seed as usize) % k;
        let scale = 0.1 + 10.0 * ((t * 13) % 17) as f32 / 17.0;
        for i in 0..d {
            acts[t * d + i] = scale * (dirs[c * d + i] + 0.6 * noise[t * d + i]);
        }
        if t % 11 == 5 {
            mask[t] = 0;
        }
        if t % 29 == 3 {
            acts[t * d..(t + 1) * d].fill(0.0);
        }
    }
    Data { acts, mask, seq_len, d }
}

fn run(backend: &dyn Backend, centers: &Centers, acts: ActivationsRef, data: &Data, params: MembershipParams) -> PassOutput {
    let tokens = Tokens { source: "test", chunk_index: 0, first_row: 0, activations: acts, seq_len: data.seq_len, d: data.d, mask: Some(&data.mask) };
    backend.run(centers, &tokens, params, Want { dense: true, sparse: true, stats: true, sums: true }).unwrap()
}

fn assert_same(cpu: &PassOutput, gpu: &PassOutput, k: usize, tol: f32, what: &str) {
    assert_eq!(cpu.rows.token, gpu.rows.token, "{what}: rows");
    let (a, b) = (cpu.dense.as_ref().unwrap(), gpu.dense.as_ref().unwrap());
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: dense memberships differ by {worst}");
    // Sparse rows are the dense rows' nonzeros, in cluster order.
    let sp = gpu.sparse.as_ref().unwrap();
    for r in 0..gpu.rows.len() {
        let (cl, vals) = sp.row(r);
        let want: Vec<(u32, f32)> = b[r * k..(r + 1) * k].iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(c, &v)| (c as u32, v)).collect();
        let got: Vec<(u32, f32)> = cl.iter().copied().zip(vals.iter().copied()).collect();
        assert_eq!(got, want, "{what}: sparse row {r}");
    }
    let (sc, sg) = (cpu.stats.as_ref().unwrap(), gpu.stats.as_ref().unwrap());
    assert_eq!((sc.n_rows, sc.skipped), (sg.n_rows, sg.skipped), "{what}");
    let s_scale = sc.s.iter().fold(0f64, |m, v| m.max(v.abs())).max(1.0);
    let s_err = sc.s.iter().zip(&sg.s).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
    assert!(s_err <= f64::from(tol) * s_scale * 10.0, "{what}: S differs by {s_err} (scale {s_scale})");
    for (x, y) in sc.mass.iter().zip(&sg.mass) {
        assert!((x - y).abs() <= f64::from(tol) * (sc.n_rows as f64).max(1.0), "{what}: mass {x} vs {y}");
    }
    assert!((sc.objective() - sg.objective()).abs() <= f64::from(tol), "{what}: objective {} vs {}", sc.objective(), sg.objective());
    if tol <= 1e-4 {
        let differ: u64 = sc.hard_count.iter().zip(&sg.hard_count).map(|(x, y)| x.abs_diff(*y)).sum();
        assert!(differ <= 2, "{what}: hard counts {:?} vs {:?}", sc.hard_count, sg.hard_count);
        // The CPU keeps up to RESEED_CANDIDATES per thread range, the GPU min(64, K) in all:
        // the GPU's list is the CPU's lowest, up to near-ties reordered by rounding.
        let far_c: Vec<usize> = sc.farthest.iter().map(|f| f.token).collect();
        let far_g: Vec<usize> = sg.farthest.iter().map(|f| f.token).collect();
        assert_eq!(far_g.len(), k.min(64).min(sg.n_rows as usize), "{what}");
        let head = &far_c[..far_g.len().min(far_c.len())];
        let common = far_g.iter().filter(|t| head.contains(t)).count();
        assert!(common + 2 >= far_g.len(), "{what}: reseed candidates {far_c:?} vs {far_g:?}");
    }
}

#[test]
fn memberships_and_statistics_match_the_cpu() {
    let Some(gpu32) = gpu("memberships_and_statistics_match_the_cpu", MatmulPrecision::Float32) else { return };
    let cpu = CpuBackend::default();
    for &(n, d, k) in &[(1, 1, 1), (37, 5, 3), (700, 64, 7), (3000, 384, 257), (2048, 768, 1024)] {
        let dat = data(n, 16.min(n), d, k, n as u64);
        let centers = Centers::from_rows(k, d, unit_rows(k, d, 99 + k as u64)).unwrap();
        let as_f16: Vec<f16> = dat.acts.iter().map(|&v| f16::from_f32(v)).collect();
        let as_bf16: Vec<half::bf16> = dat.acts.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let as_f64: Vec<f64> = dat.acts.iter().map(|&v| f64::from(v)).collect();
        for &(t, m) in &[(1.0, 0.01), (0.1, 0.0), (0.05, 0.3), (0.01, 0.01), (1e-4, 0.01)] {
            let params = MembershipParams { temperature: t, min_membership: m };
            for (name, acts) in [("f32", ActivationsRef::F32(&dat.acts)), ("f16", ActivationsRef::F16(&as_f16)), ("bf16", ActivationsRef::BF16(&as_bf16)), ("f64", ActivationsRef::F64(&as_f64))] {
                let what = format!("n={n} d={d} k={k} T={t} min={m} {name}");
                let c = run(&cpu, &centers, acts, &dat, params);
                // Small blocks too: the two-slot pipeline, with blocks that do not divide n.
                for backend in [CudaBackend::new(0, MatmulPrecision::Float32).unwrap(), CudaBackend::new(0, MatmulPrecision::Float32).unwrap().with_block_rows(301)] {
                    let g = run(&backend, &centers, acts, &dat, params);
                    assert_same(&c, &g, k, 1e-4, &what);
                    // Without `sums`: no S, the same m.
                    let tokens = Tokens { source: "test", chunk_index: 0, first_row: 0, activations: acts, seq_len: dat.seq_len, d, mask: Some(&dat.mask) };
                    let lean = backend.run(&centers, &tokens, params, Want { stats: true, ..Want::default() }).unwrap().stats.unwrap();
                    assert!(lean.s.is_empty(), "{what}: S computed though not asked for");
                    for (x, y) in lean.mass.iter().zip(&g.stats.as_ref().unwrap().mass) {
                        assert!((x - y).abs() <= 1e-9 * (n as f64), "{what}: mass without sums {x} vs {y}");
                    }
                }
            }
        }
    }
    drop(gpu32);
}

#[test]
fn tf32_stays_within_its_documented_error() {
    let Some(tf32) = gpu("tf32_stays_within_its_documented_error", MatmulPrecision::Tf32) else { return };
    let cpu = CpuBackend::default();
    let (n, d, k) = (4096, 768, 1024);
    let dat = data(n, 64, d, k, 5);
    let centers = Centers::from_rows(k, d, unit_rows(k, d, 7)).unwrap();
    let params = MembershipParams { temperature: 1.0, min_membership: 0.0 };
    let c = run(&cpu, &centers, ActivationsRef::F32(&dat.acts), &dat, params);
    let g = run(&tf32, &centers, ActivationsRef::F32(&dat.acts), &dat, params);
    let (a, b) = (c.dense.unwrap(), g.dense.unwrap());
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("TF32 at T = 1, K = {k}, D = {d}: largest membership error {worst:e}");
    assert!(worst < 2e-3, "TF32 error {worst}");
}

fn planted_config_on(device: &str) -> ClusteringConfig {
    ClusteringConfig { device: device.parse().unwrap(), ..planted_config() }
}

fn fit_with(backend: &dyn Backend, config: &ClusteringConfig, init: Option<Centers>, chunks: &[PathBuf], out: &Path) -> Model {
    fit_chunks(FitRequest { config, initial_centers: init, chunks, output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, backend, &mut |_| {}).unwrap()
}

#[test]
fn a_whole_fit_matches_the_cpu_and_the_independent_fit() {
    let Some(gpu32) = gpu("a_whole_fit_matches_the_cpu_and_the_independent_fit", MatmulPrecision::Float32) else { return };
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("planted_b_f16_compressed.npz")];
    let (shape, init) = read_npy_f32(&fixture("planted_init_centers.npy")).unwrap();
    let init = Centers::from_rows(shape[0], shape[1], init).unwrap();
    let (dc, dg) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cpu_model = fit_with(&CpuBackend::default(), &planted_config_on("cpu"), Some(init.clone()), &chunks, dc.path());
    let gpu_model = fit_with(&gpu32, &planted_config_on("cuda"), Some(init), &chunks, dg.path());
    let (shape, expected) = read_npy_f32(&fixture("planted_expected_centers.npy")).unwrap();
    for c in 0..shape[0] {
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>();
        let g = gpu_model.centers.row(c);
        assert!(1.0 - cos(g, cpu_model.centers.row(c)) < 1e-5, "center {c} vs the CPU");
        assert!(1.0 - cos(g, &expected[c * shape[1]..(c + 1) * shape[1]]) < 1e-5, "center {c} vs the expected fit");
    }
    assert_eq!(cpu_model.cluster_count, gpu_model.cluster_count);
    for (c, (a, b)) in cpu_model.exemplars.iter().zip(&gpu_model.exemplars).enumerate() {
        let loc = |e: &soft_cluster_core::exemplars::Exemplar| (e.chunk, e.batch, e.position, e.tokens.clone());
        assert_eq!(a.iter().map(loc).collect::<Vec<_>>(), b.iter().map(loc).collect::<Vec<_>>(), "exemplars of cluster {c}");
        for (x, y) in a.iter().zip(b) {
            assert!((x.value - y.value).abs() <= 1e-4);
        }
    }
    for name in ["planted_a_f32", "planted_b_f16_compressed"] {
        let file = format!("{name}.memberships.npz");
        let (_, ic) = read_npz_i64(&dc.path().join(&file), "indices");
        let (_, ig) = read_npz_i64(&dg.path().join(&file), "indices");
        assert_eq!(ic, ig, "{file}: same nonzeros");
        let (_, vc) = read_npz_f32(&dc.path().join(&file), "values");
        let (_, vg) = read_npz_f32(&dg.path().join(&file), "values");
        let worst = vc.iter().zip(&vg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{file}: memberships differ by {worst}");
    }
}

/// Issue 16: two backends on one GPU (`device: "cuda:0,0"`) give the single-GPU fit: the
/// multi-device orchestration on real device passes (`S` kept on the GPU, merged on the host).
#[test]
fn two_backends_on_one_gpu_give_the_single_gpu_fit() {
    let Some(gpu32) = gpu("two_backends_on_one_gpu_give_the_single_gpu_fit", MatmulPrecision::Float32) else { return };
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("planted_b_f16_compressed.npz")];
    let (shape, init) = read_npy_f32(&fixture("planted_init_centers.npy")).unwrap();
    let init = Centers::from_rows(shape[0], shape[1], init).unwrap();
    let config = planted_config_on("cuda:0,0");
    let two = soft_cluster_core::kernels::backend_for(&config).unwrap();
    assert_eq!(two.name(), "cuda:0+cuda:0");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one_model = fit_with(&gpu32, &planted_config_on("cuda"), Some(init.clone()), &chunks, d1.path());
    let two_model = fit_with(two.as_ref(), &config, Some(init), &chunks, d2.path());
    for c in 0..shape[0] {
        let cos: f64 = one_model.centers.row(c).iter().zip(two_model.centers.row(c)).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        assert!(1.0 - cos < 1e-6, "center {c}: cosine {cos}");
    }
    assert_eq!(one_model.cluster_count, two_model.cluster_count);
    let loc = |m: &Model| m.exemplars.iter().map(|l| l.iter().map(|e| e.location()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(loc(&one_model), loc(&two_model));
    for name in ["planted_a_f32", "planted_b_f16_compressed"] {
        let file = format!("{name}.memberships.npz");
        assert_eq!(read_npz_i64(&d1.path().join(&file), "indices").1, read_npz_i64(&d2.path().join(&file), "indices").1, "{file}");
        let (_, a) = read_npz_f32(&d1.path().join(&file), "values");
        let (_, b) = read_npz_f32(&d2.path().join(&file), "values");
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "{file}");
    }
    eprintln!("two backends on one GPU: the single-GPU fit within 1e-6 (centers) and 1e-5 (memberships)");
}
