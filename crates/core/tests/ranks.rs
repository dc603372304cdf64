//! A fit over several processes (docs/scaling.md "Many servers") with ranks that are threads of
//! this process (`ranks::ThreadRanks`): the orchestration an MPI run goes through, checked here
//! against the one-process fit; `__test__/mpi.spec.ts` runs the same under `mpirun`.

mod common;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::ranks::{Collective, OneProcess, ThreadRanks};
use soft_cluster_core::{ClusteringConfig, Error, Model, Result};
use std::path::{Path, PathBuf};

fn minilm() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/minilm");
    ["minilm_000.npz", "minilm_001.npz", "minilm_002.npz"].iter().map(|n| dir.join(n)).collect()
}

/// For the 80 planted chunks: more real tokens (17,920) than the init sample takes (16,384).
fn planted() -> ClusteringConfig {
    let mut config = ClusteringConfig::new(6, 16);
    config.n_iterations = 2;
    config
}

fn config() -> ClusteringConfig {
    let mut config = ClusteringConfig::new(16, 384);
    config.n_iterations = 4;
    config.tol = 0.0;
    config
}

fn fit_as(comm: &dyn Collective, chunks: &[PathBuf], out: &Path, resume: bool, progress: &mut dyn FnMut(&soft_cluster_core::stream::Progress)) -> Result<Model> {
    let config = if chunks.len() > 10 { planted() } else { config() };
    fit_chunks(FitRequest { config: &config, initial_centers: None, chunks, output_dir: out, resume, overwrite: false, device: None, ranks: comm }, &CpuBackend::default(), progress)
}

/// Every rank's result of one fit on `n` thread ranks (a rank that panics gives `None`).
fn fit_on_ranks(n: usize, chunks: &[PathBuf], out: &Path, resume: bool, stop_at_iteration: Option<usize>) -> Vec<Option<Result<Model>>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRanks::new(n)
            .into_iter()
            .map(|comm| {
                scope.spawn(move || {
                    fit_as(&comm, chunks, out, resume, &mut |p| {
                        // A run killed in the middle: every rank stops at the same point.
                        assert!(stop_at_iteration.is_none_or(|i| p.iteration < i), "killed");
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    })
}

#[test]
fn a_fit_on_two_three_or_four_ranks_is_the_one_process_fit() {
    let one_dir = tempfile::tempdir().unwrap();
    let one = fit_as(&OneProcess, &minilm(), one_dir.path(), false, &mut |_| {}).unwrap();
    // Four ranks for three chunks: one rank reads nothing and still takes part.
    for n in [2, 3, 4] {
        let dir = tempfile::tempdir().unwrap();
        let models: Vec<Model> = fit_on_ranks(n, &minilm(), dir.path(), false, None).into_iter().map(|m| m.unwrap().unwrap()).collect();
        common::assert_same_fit(&one, one_dir.path(), &models[0], dir.path(), &minilm(), &format!("{n} ranks"));
        // Every rank returns rank 0's model, which is the one file written.
        for m in &models[1..] {
            assert_eq!(m.centers, models[0].centers, "{n} ranks");
            assert_eq!(m.exemplars, models[0].exemplars, "{n} ranks");
        }
        let saved = Model::load(&dir.path().join("model.safetensors")).unwrap();
        assert_eq!(saved.centers, models[0].centers);
        let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["minilm_000.memberships.npz", "minilm_001.memberships.npz", "minilm_002.memberships.npz", "model.safetensors", "soft-cluster-run.json"], "{n} ranks");
    }
}

#[test]
fn the_init_sample_cut_over_ranks_is_the_one_process_sample() {
    // Each rank keeps its own smallest keys; the ranks must agree on one cut.
    let dir = tempfile::tempdir().unwrap();
    let (chunks, _) = common::planted_chunks(dir.path(), 80, 6, 16, 7);
    let one_dir = dir.path().join("one");
    let one = fit_as(&OneProcess, &chunks, &one_dir, false, &mut |_| {}).unwrap();
    let many_dir = dir.path().join("three");
    let many = fit_on_ranks(3, &chunks, &many_dir, false, None).swap_remove(0).unwrap().unwrap();
    common::assert_same_fit(&one, &one_dir, &many, &many_dir, &chunks, "3 ranks, 80 chunks");
}

#[test]
fn a_bad_chunk_on_one_rank_ends_every_rank_with_its_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A chunk whose header is good and whose values are not: only the rank that reads it finds out.
    let bad = dir.path().join("bad.npz");
    let mut acts = vec![0.5f32; 2 * 4 * 384];
    acts[384 * 5 + 7] = f32::NAN;
    common::write_chunk(&bad, 2, 4, 384, &acts, None, None);
    let chunks: Vec<PathBuf> = minilm().into_iter().chain([bad.clone()]).collect();
    let out = dir.path().join("out");
    let results = fit_on_ranks(3, &chunks, &out, false, None);
    let owner = soft_cluster_core::ranks::assign_chunks(&chunks.iter().map(|c| soft_cluster_core::sources::chunk_shape(c).map(|(b, s, _)| (b * s) as u64).unwrap()).collect::<Vec<_>>(), 3).iter().position(|l| l.contains(&3)).unwrap();
    for (rank, result) in results.into_iter().enumerate() {
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, Error::OnRank { rank: r, size: 3, .. } if r == owner), "rank {rank}: {err}");
        assert_eq!(err.code(), "ERR_NON_FINITE", "rank {rank}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("rank {owner} of 3: ")) && message.contains("bad.npz") && message.contains("NaN"), "rank {rank}: {message}");
    }
    // Nothing under a final name, no staging folder left: the folder this run made is gone.
    assert!(!out.exists(), "{:?}", std::fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()));
}

#[test]
fn a_run_killed_on_three_ranks_resumes_on_two_with_the_same_result() {
    let one_dir = tempfile::tempdir().unwrap();
    let one = fit_as(&OneProcess, &minilm(), one_dir.path(), false, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let killed = fit_on_ranks(3, &minilm(), dir.path(), false, Some(3));
    assert!(killed.iter().all(Option::is_none), "every rank stopped in iteration 3");
    assert!(dir.path().join("checkpoint.safetensors").exists());
    assert!(!dir.path().join("model.safetensors").exists());
    let resumed: Vec<Model> = fit_on_ranks(2, &minilm(), dir.path(), true, None).into_iter().map(|m| m.unwrap().unwrap()).collect();
    common::assert_same_fit(&one, one_dir.path(), &resumed[0], dir.path(), &minilm(), "killed on 3 ranks, resumed on 2");
    assert!(!dir.path().join("checkpoint.safetensors").exists());
}

/// Thread ranks whose rank 2 is told a staging folder that is not there: what a rank on a node
/// that does not see the output folder (not on a shared filesystem) meets.
struct BlindRank2(ThreadRanks, std::sync::atomic::AtomicBool);

impl Collective for BlindRank2 {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        self.0.all_reduce_sum(values)
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        self.0.all_gather(bytes)
    }
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        // The first broadcast of a fit is the staging folder's name.
        let got = self.0.broadcast(bytes)?;
        let first = !self.1.swap(true, std::sync::atomic::Ordering::Relaxed);
        Ok(if first && self.rank() == 2 { b".run-elsewhere.soft-cluster-tmp-1".to_vec() } else { got })
    }
}

#[test]
fn a_rank_that_cannot_write_into_the_output_folder_ends_every_rank_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let results: Vec<Result<Model>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRanks::new(3)
            .into_iter()
            .map(|comm| {
                let out = &out;
                scope.spawn(move || fit_as(&BlindRank2(comm, Default::default()), &minilm(), out, false, &mut |_| {}))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, result) in results.into_iter().enumerate() {
        let message = result.unwrap_err().to_string();
        assert!(message.starts_with("rank 2 of 3: ") && message.contains("out") && message.contains("does not see the staging folder"), "rank {rank}: {message}");
    }
    assert!(!out.exists(), "rank 0 removes the folder it made when the run fails");
}
