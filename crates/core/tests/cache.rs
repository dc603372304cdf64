//! The activation cache (`cache::ChunkCache`): a fit that keeps its chunks in memory gives the
//! same bits as one that reads the files every pass, reads the files only once, and falls back to
//! streaming when the chunks do not fit its budget.

mod common;
use common::*;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::stream::{Phase, Progress};
use soft_cluster_core::{CacheSetting, ClusteringConfig, Error, Model, Result};
use std::path::{Path, PathBuf};

const K: usize = 4;
const D: usize = 16;

fn config(cache: CacheSetting) -> ClusteringConfig {
    let mut c = ClusteringConfig::new(K, D);
    c.n_iterations = 4;
    c.tol = 0.0;
    c.cache = cache;
    c
}

fn fit(config: &ClusteringConfig, chunks: &[PathBuf], out: &Path, progress: &mut dyn FnMut(&Progress)) -> Result<Model> {
    fit_chunks(FitRequest { config, initial_centers: None, chunks, output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), progress)
}

/// Everything but timings and where the data came from.
fn same_model(a: &Model, b: &Model) {
    assert_eq!(a.centers, b.centers);
    assert_eq!(a.cluster_mass, b.cluster_mass);
    assert_eq!(a.cluster_count, b.cluster_count);
    assert_eq!(a.exemplars, b.exemplars);
    assert_eq!(a.history.len(), b.history.len());
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!((x.objective, x.max_shift, &x.mass, x.reseeds, x.twins, x.skipped), (y.objective, y.max_shift, &y.mass, y.reseeds, y.twins, y.skipped));
    }
}

fn same_outputs(a: &Path, b: &Path, chunks: &[PathBuf]) {
    for chunk in chunks {
        let name = chunk.file_name().unwrap().to_str().unwrap().replace(".npz", ".memberships.npz");
        assert_eq!(std::fs::read(a.join(&name)).unwrap(), std::fs::read(b.join(&name)).unwrap(), "{name}");
    }
}

/// Bytes of the chunks as the cache holds them: float32 activations, masks, int64 token ids.
fn data_bytes(chunks: &[PathBuf]) -> u64 {
    let bytes = |c: soft_cluster_core::Chunk| c.activations.len() * 4 + c.attention_mask.map_or(0, |m| m.len()) + c.token_ids.map_or(0, |t| 8 * t.len());
    chunks.iter().map(|c| bytes(soft_cluster_core::read_chunk(c).unwrap()) as u64).sum()
}

#[test]
fn cached_and_streamed_fits_give_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (chunks, _) = planted_chunks(dir.path(), 3, K, D, 5);
    let bytes = data_bytes(&chunks);
    let streamed = fit(&config(CacheSetting::Off), &chunks, &dir.path().join("off"), &mut |_| {}).unwrap();
    assert!(streamed.history.iter().all(|h| h.data == "files (cache off)"), "{:?}", streamed.history[0].data);
    for (label, setting) in [("auto", CacheSetting::Auto), ("exact budget", CacheSetting::Bytes(bytes))] {
        let out = dir.path().join(label.replace(' ', "-"));
        let cached = fit(&config(setting), &chunks, &out, &mut |_| {}).unwrap();
        same_model(&streamed, &cached);
        same_outputs(&dir.path().join("off"), &out, &chunks);
        // The init pass filled the cache: every iteration read memory.
        for h in &cached.history {
            assert_eq!(h.data, format!("host cache, {bytes} bytes"), "{label}");
        }
    }
    // A budget the headers already rule out, and one the float32 data passes only once read
    // (the estimate counts 2 bytes a value): both stream every pass and give the same bits.
    for (label, budget, why) in [("small", bytes / 4, "files (the chunks take more than"), ("passed", bytes - 1, "files (the chunks take more than")] {
        let out = dir.path().join(label);
        let model = fit(&config(CacheSetting::Bytes(budget)), &chunks, &out, &mut |_| {}).unwrap();
        same_model(&streamed, &model);
        same_outputs(&dir.path().join("off"), &out, &chunks);
        assert!(model.history.iter().all(|h| h.data.starts_with(why)), "{label}: {}", model.history[0].data);
    }
}

#[test]
fn a_cached_fit_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let (chunks, _) = planted_chunks(dir.path(), 2, K, D, 6);
    let originals: Vec<Vec<u8>> = chunks.iter().map(|c| std::fs::read(c).unwrap()).collect();
    // Once the iterations start, the files are overwritten with garbage: only a fit that kept
    // them in memory finishes.
    let run = |setting: CacheSetting, out: &str| {
        for (chunk, bytes) in chunks.iter().zip(&originals) {
            std::fs::write(chunk, bytes).unwrap();
        }
        let mut spoiled = false;
        fit(&config(setting), &chunks, &dir.path().join(out), &mut |p| {
            if p.phase == Phase::Iterate && !spoiled {
                chunks.iter().for_each(|c| std::fs::write(c, b"not a chunk any more").unwrap());
                spoiled = true;
            }
        })
    };
    let cached = run(CacheSetting::Auto, "auto").unwrap();
    assert_eq!(cached.history.len(), 4);
    match run(CacheSetting::Off, "off") {
        Err(Error::BadChunk { file, .. }) => assert!(file.ends_with(".npz"), "{file}"),
        other => panic!("a streamed fit must read the spoiled files: {other:?}"),
    }
}

#[test]
fn cache_settings_parse_and_are_named_in_errors() {
    let parse = |v: serde_json::Value| ClusteringConfig::from_json(&serde_json::json!({"nClusters": 2, "dModel": 4, "cache": v}));
    assert_eq!(parse(serde_json::json!("auto")).unwrap().cache, CacheSetting::Auto);
    assert_eq!(parse(serde_json::json!("off")).unwrap().cache, CacheSetting::Off);
    assert_eq!(parse(serde_json::json!(1_000_000)).unwrap().cache, CacheSetting::Bytes(1_000_000));
    for bad in [serde_json::json!("on"), serde_json::json!(-1), serde_json::json!(1.5), serde_json::json!(true)] {
        match parse(bad.clone()) {
            Err(Error::Config { field, .. }) => assert_eq!(field, "cache", "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Round trip through the model's stored config.
    let c = parse(serde_json::json!(4096)).unwrap();
    assert_eq!(ClusteringConfig::from_json(&c.to_json()).unwrap(), c);
}

/// Where a chunk's activations live (to see which buffers a stream reuses).
fn buffer_of(chunk: &soft_cluster_core::Chunk) -> usize {
    use soft_cluster_core::Activations as A;
    match &chunk.activations {
        A::BF16(v) => v.as_ptr() as usize,
        A::F16(v) => v.as_ptr() as usize,
        A::F32(v) => v.as_ptr() as usize,
        A::F64(v) => v.as_ptr() as usize,
    }
}

#[test]
fn streamed_passes_read_every_chunk_into_two_reused_buffers_and_leave_kept_chunks_alone() {
    use soft_cluster_core::stream::stream_chunks_with;
    let dir = tempfile::tempdir().unwrap();
    let (chunks, _) = planted_chunks(dir.path(), 7, K, D, 11);
    let fresh: Vec<_> = chunks.iter().map(|c| soft_cluster_core::read_chunk(c).unwrap()).collect();
    let mut spares = Vec::new();
    let mut buffers = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for pass in 0..3 {
        // One reading thread (tests/stream.rs has several).
        stream_chunks_with(1, &chunks, D, &mut spares, |i, chunk| {
            assert_eq!(chunk.activations, fresh[i].activations, "pass {pass}, chunk {i}: the values of a reused buffer");
            assert_eq!((&chunk.attention_mask, &chunk.token_ids), (&fresh[i].attention_mask, &fresh[i].token_ids));
            buffers.insert(buffer_of(&chunk));
            // The first pass keeps chunk 2: its buffer is its own from then on.
            if pass == 0 && i == 2 {
                kept.push(chunk);
                return Ok(None);
            }
            Ok(Some(chunk))
        })
        .unwrap();
        assert_eq!(spares.len(), 2, "pass {pass}: the last two buffers are kept for the next pass");
    }
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].activations, fresh[2].activations, "a kept chunk is not read into");
    // Two buffers for the first pass, one more after chunk 2 was kept, none after.
    assert_eq!(buffers.len(), 3, "{buffers:?}");
}
