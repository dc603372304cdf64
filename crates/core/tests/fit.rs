//! `fit_chunks` end to end: the planted fixtures against the independent float64 fit, chunking
//! invariance, determinism, k-means++ recovery, reseeding, and failures that leave no outputs.

mod common;
use common::*;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::stream::Progress;
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::npz::read_npy_f32;
use soft_cluster_core::{read_chunk, Centers, ClusteringConfig, Model, Temperature};
use std::path::{Path, PathBuf};

fn centers_file(name: &str) -> Centers {
    let (shape, data) = read_npy_f32(&fixture(name)).unwrap();
    Centers::from_rows(shape[0], shape[1], data).unwrap()
}

fn fit(config: &ClusteringConfig, init: Option<Centers>, chunks: &[PathBuf], out: &Path) -> Model {
    let mut reports: Vec<Progress> = Vec::new();
    let model = fit_chunks(FitRequest { config, initial_centers: init, chunks, output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |p| reports.push(p.clone())).unwrap();
    assert!(!reports.is_empty(), "progress was reported");
    model
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

#[test]
fn planted_fixtures_reproduce_the_independent_fit() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("planted_b_f16_compressed.npz")];
    let model = fit(&planted_config(), Some(centers_file("planted_init_centers.npy")), &chunks, dir.path());

    let expected = centers_file("planted_expected_centers.npy");
    for c in 0..6 {
        let cos = cosine(model.centers.row(c), expected.row(c));
        assert!(1.0 - cos < 1e-5, "center {c}: cosine {cos}");
    }
    assert_eq!(model.history.len(), 5);
    assert_eq!(model.chunks, vec!["planted_a_f32.npz", "planted_b_f16_compressed.npz"]);

    // Memberships of planted_a as written, against the expected file.
    let ours = dir.path().join("planted_a_f32.memberships.npz");
    let want = fixture("planted_a_f32.expected.memberships.npz");
    let (shape, got_idx) = read_npz_i64(&ours, "indices");
    let (_, want_idx) = read_npz_i64(&want, "indices");
    assert_eq!(shape[1], 3);
    assert_eq!(got_idx, want_idx, "same nonzero (batch, position, cluster), in the same order");
    let (_, got_val) = read_npz_f32(&ours, "values");
    let (_, want_val) = read_npz_f32(&want, "values");
    for (i, (g, w)) in got_val.iter().zip(&want_val).enumerate() {
        assert!((g - w).abs() <= 1e-4, "membership {i}: {g} vs {w}");
    }

    // Exemplars against planted_expected.json.
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("planted_expected.json")).unwrap()).unwrap();
    let want = spec["expected_exemplars"].as_array().unwrap();
    for (c, list) in want.iter().enumerate() {
        let list = list.as_array().unwrap();
        assert_eq!(model.exemplars[c].len(), list.len(), "cluster {c}");
        for (got, w) in model.exemplars[c].iter().zip(list) {
            let loc = (w["chunk"].as_u64().unwrap() as usize, w["batch"].as_u64().unwrap() as usize, w["position"].as_u64().unwrap() as usize);
            assert_eq!((got.chunk, got.batch, got.position), loc, "cluster {c}");
            assert!((f64::from(got.value) - w["value"].as_f64().unwrap()).abs() <= 1e-4);
            let tokens: Vec<i64> = w["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
            assert_eq!(got.tokens, tokens, "cluster {c} tokens");
            for (g, e) in got.context_memberships.iter().zip(w["context_memberships"].as_array().unwrap()) {
                assert!((f64::from(*g) - e.as_f64().unwrap()).abs() <= 1e-4, "cluster {c} context {g} vs {e}");
            }
        }
    }

    // The saved model is the returned one.
    assert_eq!(Model::load(&dir.path().join("model.safetensors")).unwrap(), model);
}

/// Splits the real chunk `planted_a_f32.npz` into two files at sequence `at`.
fn split_planted_a(dir: &Path, at: usize) -> Vec<PathBuf> {
    let chunk = read_chunk(&fixture("planted_a_f32.npz")).unwrap();
    let (s, d) = (chunk.seq_len, chunk.d_model);
    let acts = chunk.activations.to_f32();
    let mask = chunk.attention_mask.unwrap();
    let ids = chunk.token_ids.unwrap();
    let mut out = Vec::new();
    for (name, range) in [("first.npz", 0..at), ("second.npz", at..chunk.batch)] {
        let p = dir.join(name);
        write_chunk(&p, range.len(), s, d, &acts[range.start * s * d..range.end * s * d], Some(&mask[range.start * s..range.end * s]), Some(&ids[range.start * s..range.end * s]));
        out.push(p);
    }
    out
}

#[test]
fn the_same_tokens_in_other_chunk_files_give_the_same_centers() {
    let dir = tempfile::tempdir().unwrap();
    let b = fixture("planted_b_f16_compressed.npz");
    let whole = fit(&planted_config(), Some(centers_file("planted_init_centers.npy")), &[fixture("planted_a_f32.npz"), b.clone()], &dir.path().join("whole"));
    let mut parts = split_planted_a(dir.path(), 2);
    parts.push(b);
    let split = fit(&planted_config(), Some(centers_file("planted_init_centers.npy")), &parts, &dir.path().join("split"));
    for c in 0..6 {
        assert!(1.0 - cosine(whole.centers.row(c), split.centers.row(c)) < 1e-5, "center {c}");
    }
    assert_eq!(whole.cluster_count, split.cluster_count);
}

#[test]
fn kmeans_plus_plus_recovers_planted_directions_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (k, d) = (6, 32);
    let (paths, truth) = planted_chunks(dir.path(), 4, k, d, 7);
    let mut config = ClusteringConfig::new(k, d);
    config.temperature = Temperature::Fixed(0.1);
    config.n_iterations = 15;
    for seed in 0..4 {
        config.seed = seed;
        let m = fit(&config, None, &paths, &dir.path().join(format!("seed{seed}")));
        for t in 0..k {
            let best = (0..k).map(|c| cosine(&truth[t * d..(t + 1) * d], m.centers.row(c))).fold(f64::MIN, f64::max);
            assert!(best > 0.98, "seed {seed}, true direction {t}: best cosine {best}");
        }
    }
    config.seed = 3;
    let a = fit(&config, None, &paths, &dir.path().join("a"));
    for t in 0..k {
        let best = (0..k).map(|c| cosine(&truth[t * d..(t + 1) * d], a.centers.row(c))).fold(f64::MIN, f64::max);
        let all: Vec<String> = (0..k).map(|c| format!("{:.3}", cosine(&truth[t * d..(t + 1) * d], a.centers.row(c)))).collect();
        assert!(best > 0.98, "true direction {t}: best cosine {best}: {all:?} {:?}", a.history.iter().map(|h| (h.objective, h.max_shift)).collect::<Vec<_>>());
    }
    // Same files, same seed: the same model file, apart from the timings in the history.
    let b = fit(&config, None, &paths, &dir.path().join("b"));
    let strip = |path: PathBuf| {
        let mut m = Model::load(&path).unwrap();
        m.history.iter_mut().for_each(|h| h.seconds = 0.0);
        m.to_bytes().unwrap()
    };
    assert_eq!(strip(dir.path().join("a/model.safetensors")), strip(dir.path().join("b/model.safetensors")));
    assert_eq!(a.centers.data, b.centers.data, "bit for bit");
    // And the files themselves differ only in the history's timings.
    let raw = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
    let (ra, rb) = (raw("a/model.safetensors"), raw("b/model.safetensors"));
    assert_eq!(ra[ra.len() - 4096..], rb[rb.len() - 4096..], "tensor data is byte-identical");
    // Another seed starts elsewhere.
    config.seed = 4;
    config.n_iterations = 1;
    let c = fit(&config, None, &paths, &dir.path().join("c"));
    assert_ne!(c.centers.data, a.centers.data);
}

#[test]
fn an_empty_cluster_is_reseeded_to_the_farthest_token() {
    let dir = tempfile::tempdir().unwrap();
    let (k, d) = (3, 8);
    let (paths, _) = planted_chunks(dir.path(), 1, 2, d, 11);
    // Center 2 points away from every token; with a high threshold it gets no mass at all.
    let mut init = unit_rows(2, d, 11);
    let opposite: Vec<f32> = init[..d].iter().map(|v| -v).collect();
    init.extend(opposite);
    let mut config = ClusteringConfig::new(k, d);
    config.temperature = Temperature::Fixed(0.05);
    config.min_membership = 0.2;
    config.n_iterations = 2;
    config.tol = 0.0;
    let model = fit(&config, Some(Centers::from_rows(k, d, init).unwrap()), &paths, dir.path());
    assert_eq!(model.history[0].reseeds, 1);
    assert_eq!(model.history[0].mass[2], 0.0);
    assert!(model.history[1].mass[2] > 0.0, "the reseeded center gathers mass: {:?}", model.history[1].mass);
}

#[test]
fn failures_name_the_chunk_and_leave_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = planted_config();
    for bad in ["bad/wrong_d_model.npz", "bad/truncated.npz", "bad/nan_in_valid_token.npz"] {
        let out = dir.path().join(bad.replace('/', "_"));
        let chunks = vec![fixture("planted_a_f32.npz"), fixture(bad)];
        let err = fit_chunks(FitRequest { config: &config, initial_centers: Some(centers_file("planted_init_centers.npy")), chunks: &chunks, output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains(fixture(bad).to_str().unwrap()), "{bad}: {err}");
        assert!(!out.join("model.safetensors").exists());
        assert!(!out.join("planted_a_f32.memberships.npz").exists(), "no outputs before the iterations succeed");
    }
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("planted_a_f32.npz")];
    let err = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &chunks, output_dir: dir.path(), resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("their names (without .npz) must differ"), "{err}");
    let err = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &[fixture("bad/all_masked.npz")], output_dir: dir.path(), resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("fewer than nClusters"), "{err}");
}

#[test]
fn membership_files_hold_the_spec_arrays_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = planted_config();
    config.n_iterations = 1;
    fit(&config, Some(centers_file("planted_init_centers.npy")), &[fixture("planted_a_f32.npz")], dir.path());
    let path = dir.path().join("planted_a_f32.memberships.npz");
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut names = npz.names().unwrap();
    names.sort();
    assert_eq!(names, vec!["indices", "metadata", "sequence_length", "total_sequences", "values"]);
    let b: ndarray::Array0<i64> = npz.by_name("total_sequences").unwrap();
    let s: ndarray::Array0<i64> = npz.by_name("sequence_length").unwrap();
    assert_eq!((b.into_scalar(), s.into_scalar()), (5, 32));
    let (_, idx) = read_npz_i64(&path, "indices");
    let triples: Vec<&[i64]> = idx.chunks(3).collect();
    assert!(triples.windows(2).all(|w| w[0] < w[1]), "sorted by (batch, position, cluster)");
    // The metadata member: a 0-d '<U' string of JSON.
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("metadata.npy").unwrap(), &mut raw).unwrap();
    let header_len = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    let header = String::from_utf8_lossy(&raw[10..10 + header_len]).to_string();
    assert!(header.contains("'descr': '<U") && header.contains("'shape': ()"), "{header}");
    let text: String = raw[10 + header_len..].chunks(4).map(|c| char::from_u32(u32::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    let meta: serde_json::Value = serde_json::from_str(text.trim_end_matches('\0')).unwrap();
    assert_eq!(meta["total_sequences"], 5);
    assert_eq!(meta["sequence_length"], 32);
    assert_eq!(meta["n_clusters"], 6);
    assert_eq!(meta["source"], "planted_a_f32.npz");
    assert_eq!(meta["format_version"], 1);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Runs a fit that is "killed" (a panic out of the progress callback) at the first report
/// matching `kill_at`; returns whether it was interrupted.
fn interrupted_fit(config: &ClusteringConfig, chunks: &[PathBuf], out: &Path, resume: bool, kill_at: impl Fn(&Progress) -> bool) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let request = FitRequest { config, initial_centers: None, chunks, output_dir: out, resume, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess };
        fit_chunks(request, &CpuBackend::default(), &mut |p| {
            if kill_at(p) {
                panic!("killed");
            }
        })
        .unwrap()
    }))
    .is_err()
}

/// The model without what depends on the run rather than the data: timings, and whether a pass
/// read the files or the cache (a resumed fit's first pass reads the files).
fn without_timings(mut m: Model) -> Model {
    m.history.iter_mut().for_each(|h| (h.seconds, h.data) = (0.0, String::new()));
    m
}

#[test]
fn an_interrupted_fit_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 3, 4, 16, 21);
    let mut config = ClusteringConfig::new(4, 16);
    config.n_iterations = 6;
    config.tol = 0.0;
    config.temperature = Temperature::Fixed(0.2);
    let whole = without_timings(fit(&config, None, &paths, &dir.path().join("whole")));
    assert!(!dir.path().join("whole/checkpoint.safetensors").exists(), "a finished fit removes its checkpoint");

    use soft_cluster_core::stream::Phase;
    for (label, kill_at) in [
        ("mid-iteration", Box::new(|p: &Progress| p.phase == Phase::Iterate && p.iteration == 3 && p.chunk == 2) as Box<dyn Fn(&Progress) -> bool>),
        ("mid-output", Box::new(|p: &Progress| p.phase == Phase::Output && p.chunk == 2)),
    ] {
        let out = dir.path().join(label);
        assert!(interrupted_fit(&config, &paths, &out, false, kill_at), "{label}: the fit was interrupted");
        let cp = soft_cluster_core::checkpoint::Checkpoint::load(&out).unwrap().expect("a checkpoint was left");
        assert_eq!(cp.history.len(), if label == "mid-iteration" { 2 } else { 6 }, "{label}");
        let resumed = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &paths, output_dir: &out, resume: true, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap();
        assert_eq!(without_timings(resumed), whole, "{label}: resumed = uninterrupted");
        assert_eq!(without_timings(Model::load(&out.join("model.safetensors")).unwrap()), whole);
    }
}

#[test]
fn resume_refuses_changed_chunks_and_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let mut config = ClusteringConfig::new(3, 8);
    config.n_iterations = 4;
    config.tol = 0.0;
    let out = dir.path().join("out");
    assert!(interrupted_fit(&config, &paths, &out, false, |p| p.iteration == 2));
    let resume = |config: &ClusteringConfig| fit_chunks(FitRequest { config, initial_centers: None, chunks: &paths, output_dir: &out, resume: true, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {});

    let mut other = config.clone();
    other.temperature = Temperature::Fixed(0.5);
    let err = resume(&other).unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_CONFIG");
    assert!(err.to_string().contains("temperature = 0.5 (checkpoint: 0."), "{err}");

    // Rewriting a chunk (same bytes, new modification time) is a change.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&paths[1], std::fs::read(&paths[1]).unwrap()).unwrap();
    let err = resume(&config).unwrap_err();
    assert!(err.to_string().contains(paths[1].to_str().unwrap()) && err.to_string().contains("changed since the checkpoint"), "{err}");

    // Without resume, the unfinished fit is refused unless it may be overwritten; then it starts over.
    let fresh = |overwrite| fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &paths, output_dir: &out, resume: false, overwrite, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {});
    let err = fresh(false).err().unwrap();
    assert_eq!(err.code(), "ERR_OUTPUT_EXISTS");
    assert!(err.to_string().contains("holds an unfinished fit (checkpoint.safetensors); pass --resume"), "{err}");
    fresh(true).unwrap();
}

#[test]
fn the_world_failing_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 9);
    let run = |config: &ClusteringConfig, chunks: &[PathBuf], out: &Path| fit_chunks(FitRequest { config, initial_centers: None, chunks, output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {});
    let config = ClusteringConfig::new(3, 8);

    // An output folder that cannot be made: a file stands where it should be.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let err = run(&config, &paths, &blocker.join("out")).unwrap_err();
    assert_eq!(err.code(), "ERR_IO");
    assert!(err.to_string().contains("blocker/out"), "{err}");

    // A missing chunk is named before any work.
    let missing = dir.path().join("gone.npz");
    let err = run(&config, &[paths[0].clone(), missing.clone()], &dir.path().join("o2")).unwrap_err();
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    // A chunk deleted mid-run is named too (when the passes read the files: a fit that keeps
    // its chunks in memory does not notice).
    let out = dir.path().join("o3");
    let doomed = paths[1].clone();
    let streamed = ClusteringConfig { cache: soft_cluster_core::CacheSetting::Off, ..config.clone() };
    let err = fit_chunks(FitRequest { config: &streamed, initial_centers: None, chunks: &paths, output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |p| {
        if p.iteration == 1 && p.chunk == 2 {
            let _ = std::fs::remove_file(&doomed);
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains(doomed.to_str().unwrap()), "{err}");
    assert!(!out.join("model.safetensors").exists());

    // K x D beyond this machine's memory is refused up front, with the amount needed.
    let huge = ClusteringConfig::new(1_000_000, 100_000);
    let err = run(&huge, &paths, &dir.path().join("o4")).unwrap_err();
    assert_eq!(err.code(), "ERR_TOO_LARGE");
    assert!(err.to_string().contains("needs about") && err.to_string().contains("GiB"), "{err}");
    assert!(!dir.path().join("o4").exists(), "refused before creating anything");
    // So are exemplar buffers no machine holds (they aborted the process after the iterations).
    for (e, w) in [(1_000_000_000_000usize, 8usize), (10, 1_000_000_000_000_000), (100_000, 100_000)] {
        let greedy = ClusteringConfig { n_exemplars: e, context_window: w, ..ClusteringConfig::new(3, 8) };
        let err = run(&greedy, &paths, &dir.path().join("o5")).unwrap_err();
        assert_eq!(err.code(), "ERR_TOO_LARGE", "{err}");
        assert!(err.to_string().contains(&format!("nExemplars = {e} and contextWindow = {w}")), "{err}");
    }
}

#[test]
fn transform_chunks_writes_what_the_output_pass_wrote() {
    use soft_cluster_core::transform::{transform_chunks, TransformRequest};
    let dir = tempfile::tempdir().unwrap();
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("planted_b_f16_compressed.npz")];
    let model = fit(&planted_config(), Some(centers_file("planted_init_centers.npy")), &chunks, &dir.path().join("fit"));
    let rows = transform_chunks(&model, TransformRequest { chunks: &chunks, output_dir: &dir.path().join("again"), model_file: None, overwrite: false, level: None }, &CpuBackend::default(), &mut |_| {}).unwrap();
    assert_eq!(rows, 215);
    for name in ["planted_a_f32.memberships.npz", "planted_b_f16_compressed.memberships.npz"] {
        assert_eq!(std::fs::read(dir.path().join("fit").join(name)).unwrap(), std::fs::read(dir.path().join("again").join(name)).unwrap(), "{name}");
    }
    let err = transform_chunks(&model, TransformRequest { chunks: &[fixture("bad/wrong_d_model.npz")], output_dir: &dir.path().join("bad"), model_file: None, overwrite: false, level: None }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("D = 48"), "{err}");
}

#[test]
fn zero_iterations_write_the_outputs_of_the_starting_centers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = planted_config();
    config.n_iterations = 0;
    let init = centers_file("planted_init_centers.npy");
    let model = fit(&config, Some(init.clone()), &[fixture("planted_a_f32.npz")], dir.path());
    assert!(model.history.is_empty());
    assert_eq!(model.centers, init);
    assert_eq!(model.cluster_count.iter().sum::<u64>(), 137);
    assert!(dir.path().join("planted_a_f32.memberships.npz").exists());
}

/// Unit rows of `per` tokens around each of `truth`'s rows, with Gaussian-ish noise of scale `noise`.
fn noisy_sample(truth: &[f32], k: usize, d: usize, per: usize, noise: f32, seed: u64) -> Vec<f32> {
    let jitter = unit_rows(k * per, d, seed);
    let mut out = Vec::with_capacity(k * per * d);
    for i in 0..k * per {
        let c = i % k;
        let row: Vec<f32> = (0..d).map(|j| truth[c * d + j] + noise * jitter[i * d + j]).collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        out.extend(row.iter().map(|v| v / norm));
    }
    out
}

#[test]
fn auto_temperature_is_the_documented_merge_rule() {
    use soft_cluster_core::init::{auto_temperature, AUTO_MARGIN};
    let (k, d) = (2, 8);
    let truth = unit_rows(k, d, 3);
    let sample = noisy_sample(&truth, k, d, 300, 0.3, 4);
    let centers = Centers::from_rows(k, d, truth.clone()).unwrap();
    let (t, rule) = auto_temperature(&sample, &centers, &CpuBackend::default()).unwrap();
    // By hand: both clusters are each other's nearest, so both merge temperatures are that of the
    // whole sample along the unit direction joining the centers: Var(x . u) / |mean x|.
    let u: Vec<f64> = (0..d).map(|j| f64::from(truth[j]) - f64::from(truth[d + j])).collect();
    let nu = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    let along: Vec<f64> = sample.chunks(d).map(|x| x.iter().zip(&u).map(|(&a, &b)| f64::from(a) * b / nu).sum()).collect();
    let n = along.len() as f64;
    let mean_along = along.iter().sum::<f64>() / n;
    let var = along.iter().map(|a| (a - mean_along).powi(2)).sum::<f64>() / n;
    let mean: Vec<f64> = (0..d).map(|j| sample.chunks(d).map(|x| f64::from(x[j])).sum::<f64>() / n).collect();
    let want = var / mean.iter().map(|v| v * v).sum::<f64>().sqrt() / AUTO_MARGIN;
    assert!((t - want).abs() < 1e-6 * want, "auto {t} vs hand {want}");
    assert!(rule.starts_with("auto: 10th percentile of the 2 neighbour-pair merge temperatures"), "{rule}");
}

#[test]
fn auto_temperature_follows_how_far_apart_neighbouring_clusters_are() {
    use soft_cluster_core::init::auto_temperature;
    let d = 16;
    let backend = CpuBackend::default();
    // Two clusters whose centers are at cosine `cos`, with the same small noise.
    let at_cosine = |cos: f32| {
        let base = unit_rows(2, d, 31);
        let (e0, e1) = (&base[..d], &base[d..]);
        // e1 made orthogonal to e0, then the second center at angle acos(cos) from e0.
        let dot: f32 = e0.iter().zip(e1).map(|(a, b)| a * b).sum();
        let mut o: Vec<f32> = e1.iter().zip(e0).map(|(b, a)| b - dot * a).collect();
        let n = o.iter().map(|v| v * v).sum::<f32>().sqrt();
        o.iter_mut().for_each(|v| *v /= n);
        let sin = (1.0 - cos * cos).sqrt();
        let truth: Vec<f32> = e0.iter().copied().chain(e0.iter().zip(&o).map(|(a, b)| cos * a + sin * b)).collect();
        let sample = noisy_sample(&truth, 2, d, 200, 0.05, 32);
        auto_temperature(&sample, &Centers::from_rows(2, d, truth).unwrap(), &backend).unwrap().0
    };
    let (near, far) = (at_cosine(0.9), at_cosine(0.3));
    // The merge temperature is dominated by the squared gap between the two: (1 - cos) / 2.
    assert!(far > 4.0 * near, "near {near}, far {far}");
    // More clusters in the same space sit closer together: a lower temperature keeps them apart.
    let at_k = |k: usize| {
        let truth = unit_rows(k, d, 11);
        let sample = noisy_sample(&truth, k, d, 100, 0.1, 12);
        auto_temperature(&sample, &Centers::from_rows(k, d, truth).unwrap(), &backend).unwrap().0
    };
    assert!(at_k(24) < at_k(4), "K = 24: {}, K = 4: {}", at_k(24), at_k(4));
}

#[test]
fn default_fit_chooses_and_stores_the_temperature_and_recovers_the_planted_directions() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, truth) = planted_chunks(dir.path(), 3, 6, 32, 7);
    let config = ClusteringConfig::new(6, 32); // temperature "auto"
    let model = fit(&config, None, &paths, &dir.path().join("out"));
    let Temperature::Fixed(t) = model.config.temperature else { panic!("a fit stores a number") };
    assert!(t > 1e-3 && t < 0.5, "{t}");
    assert!(model.config.temperature_rule.as_deref().is_some_and(|r| r.starts_with("auto: ")));
    for c in 0..6 {
        let best = (0..6).map(|j| cosine(&truth[c * 32..(c + 1) * 32], model.centers.row(j))).fold(f64::MIN, f64::max);
        assert!(best > 0.95, "planted direction {c}: best match {best}");
    }
    assert!(model.warnings.is_empty(), "{:?}", model.warnings);
    // The saved model carries the number and the rule, and transform needs nothing else.
    let loaded = Model::load(&dir.path().join("out/model.safetensors")).unwrap();
    assert_eq!(loaded.config, model.config);
}

#[test]
fn twin_centers_are_reseeded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (k, d) = (4, 16);
    let (paths, truth) = planted_chunks(dir.path(), 3, k, d, 21);
    // Start with centers 0 and 1 on the same planted direction: twins from the first update.
    let mut start = truth.clone();
    start.copy_within(0..d, d);
    let mut config = ClusteringConfig::new(k, d);
    config.temperature = Temperature::Fixed(0.1);
    config.tol = 0.0;
    let model = fit(&config, Some(Centers::from_rows(k, d, start).unwrap()), &paths, &dir.path().join("out"));
    let first = &model.history[0];
    assert!(first.twins >= 1 && first.reseeds >= 1, "{first:?}");
    for a in 0..k {
        for b in a + 1..k {
            assert!(cosine(model.centers.row(a), model.centers.row(b)) < 0.99, "centers {a} and {b} are still twins");
        }
    }
    // The direction the twin left uncovered is found again.
    let covered = (0..k).map(|c| (0..k).map(|j| cosine(&truth[c * d..(c + 1) * d], model.centers.row(j))).fold(f64::MIN, f64::max));
    assert!(covered.clone().all(|b| b > 0.95), "{:?}", covered.collect::<Vec<_>>());
}

#[test]
fn initial_centers_need_no_more_tokens_than_clusters_and_the_warning_never_fails_a_fit() {
    let dir = tempfile::tempdir().unwrap();
    // Two real tokens, three clusters.
    let path = dir.path().join("tiny.npz");
    write_chunk(&path, 1, 2, 2, &[1.0, 0.0, 0.0, 1.0], None, None);
    let start = || Some(Centers::from_rows(3, 2, vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0]).unwrap());
    // temperature "auto" measures the sample; k-means++ (which needs K tokens) is not run.
    let auto = fit(&ClusteringConfig::new(3, 2), start(), &[path.clone()], &dir.path().join("auto"));
    assert!(matches!(auto.config.temperature, Temperature::Fixed(t) if t > 0.0));
    // A hot numeric temperature: nearly flat memberships, so the fit warns; the value "auto" would
    // choose cannot be computed on 2 tokens for 3 clusters, and the fit still completes.
    let mut hot = ClusteringConfig::new(3, 2);
    hot.temperature = Temperature::Fixed(10.0);
    hot.n_iterations = 0;
    let model = fit(&hot, start(), &[path], &dir.path().join("hot"));
    assert_eq!(model.warnings.len(), 1, "{:?}", model.warnings);
    assert!(model.warnings[0].contains("temperature 10") && model.warnings[0].contains("could not be computed"), "{}", model.warnings[0]);
    assert!(dir.path().join("hot/model.safetensors").exists());
}

#[test]
fn cleanup_removes_only_abandoned_temporaries_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // An input chunk and a user's file that merely look like temporaries, a temporary of a live
    // process (pid 1 always runs), and one whose maker cannot exist (beyond any pid_max).
    let chunk_like = out.join(".c9.tmp-1.npz");
    std::fs::copy(&paths[0], &chunk_like).unwrap();
    for name in [".notes.tmp-backup", ".model.safetensors.soft-cluster-tmp-1", ".model.safetensors.soft-cluster-tmp-4294967294"] {
        std::fs::write(out.join(name), b"x").unwrap();
    }
    let mut config = ClusteringConfig::new(3, 8);
    config.temperature = Temperature::Fixed(0.2);
    let chunks = vec![paths[1].clone(), chunk_like.clone()];
    fit(&config, None, &chunks, &out);
    assert!(chunk_like.exists() && out.join(".notes.tmp-backup").exists());
    assert!(out.join(".model.safetensors.soft-cluster-tmp-1").exists(), "a running process's temporary is kept");
    if cfg!(target_os = "linux") {
        assert!(!out.join(".model.safetensors.soft-cluster-tmp-4294967294").exists(), "an abandoned temporary is removed");
    }
}

#[test]
fn chunks_writing_the_same_output_or_naming_the_same_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 1, 3, 8, 5);
    let bare = dir.path().join("sub");
    std::fs::create_dir_all(&bare).unwrap();
    // `chunk_000.npz` and `chunk_000` would both write chunk_000.memberships.npz.
    std::fs::copy(&paths[0], bare.join("chunk_000")).unwrap();
    let config = ClusteringConfig::new(3, 8);
    let run = |chunks: &[PathBuf]| fit_chunks(FitRequest { config: &config, initial_centers: None, chunks, output_dir: &dir.path().join("out"), resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {});
    let err = run(&[paths[0].clone(), bare.join("chunk_000")]).unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_INPUT");
    assert!(err.to_string().contains("also writes chunk_000.memberships.npz"), "{err}");
    #[cfg(unix)]
    {
        let link = dir.path().join("other_name.npz");
        std::os::unix::fs::symlink(&paths[0], &link).unwrap();
        let err = run(&[paths[0].clone(), link]).unwrap_err();
        assert!(err.to_string().contains("is the same file as another chunk"), "{err}");
    }
}

#[test]
fn a_refused_fit_leaves_no_output_folder_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClusteringConfig::new(6, 64);
    config.temperature = Temperature::Fixed(0.25);
    let out = dir.path().join("new/out");
    let chunks = vec![fixture("planted_a_f32.npz"), fixture("bad/truncated.npz")];
    let err = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &chunks, output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert_eq!(err.code(), "ERR_BAD_CHUNK", "{err}");
    assert!(!out.exists(), "the empty folder the fit made is gone");
    // A folder that was there before stays.
    std::fs::create_dir_all(&out).unwrap();
    fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &chunks, output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert!(out.exists());
}
