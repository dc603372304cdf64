//! Issue 20 case 4 and case 1's race: an output folder is held by one run at a time, never
//! silently mixes two runs' files, and an overwrite replaces the earlier run only once the new
//! one is complete (docs/formats.md "Output folder").

mod common;
use common::*;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::run_folder::{Manifest, RunFolder, RunKind, RunOptions, MANIFEST_FILE};
use soft_cluster_core::transform::{transform_chunks, TransformRequest};
use soft_cluster_core::{ClusteringConfig, Model, Result, Temperature};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn config(k: usize) -> ClusteringConfig {
    let mut config = ClusteringConfig::new(k, 8);
    config.temperature = Temperature::Fixed(0.2);
    config.n_iterations = 3;
    config
}

fn fit(k: usize, chunks: &[PathBuf], out: &Path, overwrite: bool) -> Result<Model> {
    fit_chunks(FitRequest { config: &config(k), initial_centers: None, chunks, output_dir: out, resume: false, overwrite, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {})
}

/// Every file of `dir` (names and bytes), the lock file excepted.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())).collect()
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

#[test]
fn a_second_run_into_a_folder_with_outputs_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 3, 3, 8, 5);
    let out = dir.path().join("out");
    fit(3, &paths, &out, false).unwrap();
    let m = manifest(&out);
    assert_eq!(m.command, RunKind::Fit);
    assert_eq!(m.files, vec!["chunk_000.memberships.npz", "chunk_001.memberships.npz", "chunk_002.memberships.npz", "model.safetensors"]);
    let before = contents(&out);
    assert_eq!(before.keys().cloned().collect::<Vec<_>>(), vec!["chunk_000.memberships.npz", "chunk_001.memberships.npz", "chunk_002.memberships.npz", "model.safetensors", MANIFEST_FILE], "no lock, staging or checkpoint left");

    // Another K, fewer chunks: refused, nothing touched.
    let err = fit(4, &paths[..2], &out, false).unwrap_err();
    assert_eq!(err.code(), "ERR_OUTPUT_EXISTS");
    assert!(err.to_string().contains("holds the outputs of an earlier fit run (4 files: soft-cluster-run.json)") && err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(contents(&out), before);
    // A transform into it, too.
    let model = Model::load(&out.join("model.safetensors")).unwrap();
    let request = TransformRequest { chunks: &paths[..1], output_dir: &out, model_file: None, overwrite: false, level: None };
    assert_eq!(transform_chunks(&model, request, &CpuBackend::default(), &mut |_| {}).unwrap_err().code(), "ERR_OUTPUT_EXISTS");
    assert_eq!(contents(&out), before);

    // Overwritten: only the new run's files are left, none of the old run's.
    let refit = fit(4, &paths[..2], &out, true).unwrap();
    assert_eq!(refit.config.n_clusters, 4);
    let after = contents(&out);
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), vec!["chunk_000.memberships.npz", "chunk_001.memberships.npz", "model.safetensors", MANIFEST_FILE]);
    assert_eq!(Model::load(&out.join("model.safetensors")).unwrap().config.n_clusters, 4);
    assert_eq!(manifest(&out).files.len(), 3);
}

#[test]
fn an_overwrite_that_fails_leaves_the_earlier_run_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let out = dir.path().join("out");
    fit(3, &paths, &out, false).unwrap();
    let before = contents(&out);
    // The second chunk is refused in the output pass's read (after the iterations and the
    // first chunk's memberships were written).
    let mut bad = paths.clone();
    bad.push(fixture("bad/wrong_d_model.npz"));
    let err = fit(4, &bad, &out, true).unwrap_err();
    assert_eq!(err.code(), "ERR_BAD_CHUNK", "{err}");
    assert_eq!(contents(&out), before, "the earlier run's files are untouched and nothing of the failed run is left");
}

#[test]
fn a_folder_in_use_is_refused_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 1, 3, 8, 5);
    let out = dir.path().join("out");
    let held = RunFolder::open(&out, RunKind::Transform, &[], RunOptions::default()).unwrap();
    let err = fit(3, &paths, &out, true).unwrap_err();
    assert_eq!(err.code(), "ERR_BUSY");
    assert!(err.to_string().contains(&format!("in use by soft-cluster transform, process {}, started", std::process::id())), "{err}");
    drop(held);
    assert!(!out.exists(), "the run that made the folder removed it, with its lock, when it ended");
    fit(3, &paths, &out, false).unwrap();
}

#[test]
fn concurrent_runs_into_one_folder_never_mix_or_kill_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let out = dir.path().join("out");
    let results: Vec<Result<Model>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4).map(|i| {
            let (paths, out) = (&paths, &out);
            s.spawn(move || fit(3 + i, paths, out, true))
        }).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e.code(), "ERR_BUSY"), "{e}");
        }
    }
    let done: Vec<&Model> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!done.is_empty());
    // The folder holds exactly one run: the model and memberships files agree on K.
    let k = Model::load(&out.join("model.safetensors")).unwrap().config.n_clusters;
    assert!(done.iter().any(|m| m.config.n_clusters == k));
    for name in ["chunk_000.memberships.npz", "chunk_001.memberships.npz"] {
        let (_, idx) = read_npz_i64(&out.join(name), "indices");
        assert!(idx.chunks(3).all(|r| (r[2] as usize) < k));
    }
}

#[test]
fn an_unfinished_fit_is_resumed_or_overwritten_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let out = dir.path().join("out");
    // A fit killed after its second iteration leaves its checkpoint.
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let request = FitRequest { config: &config(3), initial_centers: None, chunks: &paths, output_dir: &out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess };
        fit_chunks(request, &CpuBackend::default(), &mut |p| assert!(p.iteration < 2, "killed")).unwrap()
    }));
    assert!(killed.is_err());
    assert_eq!(contents(&out).keys().cloned().collect::<Vec<_>>(), vec!["checkpoint.safetensors"]);
    // Restarted with another K: refused, saying how to go on.
    let err = fit(4, &paths, &out, false).unwrap_err();
    assert!(err.to_string().contains("holds an unfinished fit (checkpoint.safetensors); pass --resume (resume: true) to continue it, or --overwrite"), "{err}");
    // Resumed: finishes that fit.
    let resumed = fit_chunks(FitRequest { config: &config(3), initial_centers: None, chunks: &paths, output_dir: &out, resume: true, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap();
    assert_eq!(resumed.history.len(), 3);
    assert!(!out.join("checkpoint.safetensors").exists());
    // Resuming a finished run is refused (nothing to resume; its outputs would be replaced).
    let err = fit_chunks(FitRequest { config: &config(3), initial_centers: None, chunks: &paths, output_dir: &out, resume: true, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert_eq!(err.code(), "ERR_OUTPUT_EXISTS");
}

#[test]
fn inputs_are_never_replaced_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 2, 3, 8, 5);
    let out = dir.path().join("out");
    fit(3, &paths, &out, false).unwrap();
    let model_file = out.join("model.safetensors");
    let model = Model::load(&model_file).unwrap();
    // Transform into the fit's folder, replacing its outputs, would delete the model in use.
    let request = TransformRequest { chunks: &paths, output_dir: &out, model_file: Some(&model_file), overwrite: true, level: None };
    let err = transform_chunks(&model, request, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert_eq!(err.code(), "ERR_OUTPUT_EXISTS");
    assert!(err.to_string().contains("would replace or delete model.safetensors, which is one of its inputs"), "{err}");
    assert!(model_file.exists());
    // An input chunk that has an output's name, in the output folder.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&paths[0], other.join("x.memberships.npz")).unwrap();
    std::fs::copy(&paths[1], other.join("x")).unwrap();
    let chunks = [other.join("x.memberships.npz"), other.join("x")];
    let err = fit(3, &chunks, &other, true).unwrap_err();
    assert!(err.to_string().contains("x.memberships.npz, which is one of its inputs"), "{err}");
    assert_eq!(std::fs::read(other.join("x.memberships.npz")).unwrap(), std::fs::read(&paths[0]).unwrap());
}

#[test]
fn a_hostile_manifest_cannot_make_a_run_delete_files_outside_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 1, 3, 8, 5);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    let hostile = serde_json::json!({"format": "soft-cluster-run", "format_version": 1, "command": "fit", "finished": 0, "files": ["../victim.txt", "/etc/passwd", ".."], "chunks": []});
    std::fs::write(out.join(MANIFEST_FILE), hostile.to_string()).unwrap();
    fit(3, &paths, &out, true).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    // A manifest that is not one is refused unless overwritten.
    std::fs::write(out.join(MANIFEST_FILE), b"{not json").unwrap();
    let err = fit(3, &paths, &out, false).unwrap_err();
    assert!(err.to_string().contains("is not a soft-cluster run manifest"), "{err}");
}

#[test]
fn a_killed_runs_staging_folder_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) = planted_chunks(dir.path(), 1, 3, 8, 5);
    let out = dir.path().join("out");
    // What a run killed in its output pass leaves: a staging folder of a process that is gone
    // (beyond any pid_max), and one of a live process (pid 1).
    for pid in [4294967294u32, 1] {
        let staging = out.join(format!(".run-0.soft-cluster-tmp-{pid}"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("chunk_000.memberships.npz"), b"half").unwrap();
    }
    fit(3, &paths, &out, false).unwrap();
    assert!(out.join(".run-0.soft-cluster-tmp-1").exists(), "a live process's staging is kept");
    if cfg!(target_os = "linux") {
        assert!(!out.join(".run-0.soft-cluster-tmp-4294967294").exists());
    }
}
