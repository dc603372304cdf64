//! A mutation fuzzer over real files (cargo-fuzz needs a nightly toolchain; this machine has only
//! stable). Inputs from the corpus (`fixtures/`, `fuzz/corpus/`) are mutated at the byte level and
//! inside their zip members, then fed to the chunk reader and the model loader. Every input must
//! give `Ok` or a clean `Err`: no panic, and no allocation larger than the input can justify.
//!
//! `npm test` runs a short, seeded run. A long run: `SOFT_CLUSTER_FUZZ_SECONDS=600 cargo test
//! --release -p soft-cluster-core --test fuzz -- --nocapture`. Inputs that fail are written to
//! `target/fuzz-findings/` (add them to `fuzz/corpus/` once fixed).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use soft_cluster_core::{read_chunk, Model};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Records the largest single allocation, so a lying header that makes us allocate is caught.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus(dirs: &[&str], ext: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(root().join(d)).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Rewrites one member of a zip with a mutated copy (stored), so the `.npy` parser sees it.
fn mutate_member(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let target = rng.random_range(0..zip.len().max(1));
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).ok()?;
        let name = member.name().to_string();
        let mut data = Vec::new();
        member.read_to_end(&mut data).ok()?;
        if i == target {
            mutate_bytes(rng, &mut data, 64);
        }
        out.start_file(name, zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)).ok()?;
        out.write_all(&data).ok()?;
    }
    Some(out.finish().ok()?.into_inner())
}

/// Byte-level mutations; `header_bias` focuses some of them on the first bytes (headers).
fn mutate_bytes(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, header_bias: usize) {
    for _ in 0..rng.random_range(1..4) {
        if data.is_empty() {
            data.push(rng.random());
            continue;
        }
        let at = if rng.random_bool(0.5) { rng.random_range(0..data.len().min(header_bias).max(1)) } else { rng.random_range(0..data.len()) };
        match rng.random_range(0..7) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = [0, 0xff, 0x7f, 0x80, b'9', b'(', b',', b' '][rng.random_range(0..8)],
            2 => data.truncate(at),
            3 => {
                let n = rng.random_range(1..16);
                let fill: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, fill);
            }
            4 => {
                let end = (at + rng.random_range(1..32)).min(data.len());
                data.drain(at..end);
            }
            5 => {
                // A large little-endian number where a size field may be.
                let v: u64 = [u64::MAX, u32::MAX as u64, 1 << 40, 0x7fff_ffff][rng.random_range(0..4)];
                for (i, b) in v.to_le_bytes().iter().enumerate().take(data.len() - at) {
                    data[at + i] = *b;
                }
            }
            _ => {
                let src = rng.random_range(0..data.len());
                let n = rng.random_range(1..64).min(data.len() - src);
                let copy = data[src..src + n].to_vec();
                data.splice(at..at, copy);
            }
        }
    }
}

/// Runs `target` on mutants of the corpus for `SOFT_CLUSTER_FUZZ_SECONDS` (or `default_cases`).
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, default_cases: u64, zip_aware: bool, target: impl Fn(&[u8]) -> bool) {
    assert!(!seeds.is_empty(), "{name}: empty corpus");
    let budget = std::env::var("SOFT_CLUSTER_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).map(Duration::from_secs);
    let mut rng = ChaCha8Rng::seed_from_u64(std::env::var("SOFT_CLUSTER_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7));
    let started = Instant::now();
    let (mut cases, mut accepted) = (0u64, 0u64);
    while budget.map_or(cases < default_cases, |b| started.elapsed() < b) {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let input = match zip_aware && rng.random_bool(0.5) {
            true => mutate_member(&mut rng, seed).unwrap_or_else(|| seed.clone()),
            false => {
                let mut b = seed.clone();
                mutate_bytes(&mut rng, &mut b, 128);
                b
            }
        };
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        // Nothing may allocate much more than the input could hold once decompressed.
        let limit = (input.len() * 1040).max(64 << 20);
        let largest = LARGEST.load(Ordering::Relaxed);
        if outcome.is_err() || largest > limit {
            let dir = root().join("target/fuzz-findings");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{cases}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!("{name}: case {cases} {} (largest allocation {largest} bytes); input saved to {}", if outcome.is_err() { "panicked" } else { "allocated too much" }, path.display());
        }
        accepted += u64::from(outcome.unwrap());
        cases += 1;
    }
    eprintln!("{name}: {cases} cases in {:.1}s, {accepted} read successfully, no finding", started.elapsed().as_secs_f64());
    assert!(cases > 0);
}

/// Writes the mutant to `path` and reads it as a chunk: what is read is consistent with itself,
/// and an error names the file.
fn chunk_target(path: &Path) -> impl Fn(&[u8]) -> bool + '_ {
    move |bytes| {
        std::fs::write(path, bytes).unwrap();
        match read_chunk(path) {
            Ok(chunk) => {
                assert_eq!(chunk.activations.len(), chunk.n_tokens() * chunk.d_model);
                // Read in blocks of one sequence, the same file gives the same data.
                let blocks: Vec<_> = soft_cluster_core::sources::blocks(path, 1).unwrap().collect::<Result<_, _>>().unwrap();
                assert_eq!(blocks.iter().map(|b| b.batch).sum::<usize>(), chunk.batch);
                assert_eq!(blocks.iter().map(|b| b.activations.len()).sum::<usize>(), chunk.activations.len());
                true
            }
            Err(e) => {
                let name = path.file_name().unwrap().to_string_lossy();
                assert!(e.to_string().contains(name.as_ref()), "errors name the file: {e}");
                false
            }
        }
    }
}

#[test]
fn chunk_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.npz");
    fuzz("chunk", corpus(&["fixtures", "fixtures/bad", "fuzz/corpus/chunk"], "npz"), 1500, true, chunk_target(&path));
}

#[test]
fn model_loader_survives_mutated_files() {
    fuzz("model", corpus(&["fuzz/corpus/model"], "safetensors"), 3000, false, |bytes| match Model::from_bytes(bytes, "mutant") {
        Ok(m) => {
            assert_eq!(m.centers.data.len(), m.centers.k * m.centers.d);
            true
        }
        Err(e) => {
            assert!(e.to_string().starts_with("mutant"), "errors name the file: {e}");
            false
        }
    });
}

#[test]
fn npy_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.npy");
    fuzz("npy", corpus(&["fixtures"], "npy"), 1500, false, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match soft_cluster_core::npz::read_npy_f32(&path) {
            Ok((shape, data)) => {
                assert_eq!(shape.iter().product::<usize>(), data.len());
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("mutant.npy"), "errors name the file: {e}");
                false
            }
        }
    });
}

#[test]
fn memberships_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.memberships.npz");
    let seeds = vec![std::fs::read(root().join("fixtures/planted_a_f32.expected.memberships.npz")).unwrap()];
    fuzz("memberships", seeds, 1000, true, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match soft_cluster_core::memberships_file::read(&path) {
            Ok(_) => true,
            Err(e) => {
                assert!(e.to_string().contains("mutant.memberships.npz"), "errors name the file: {e}");
                false
            }
        }
    });
}

#[test]
fn checkpoint_loader_survives_mutated_files() {
    use soft_cluster_core::checkpoint::{Checkpoint, ChunkFingerprint};
    use soft_cluster_core::{Centers, ClusteringConfig};
    // A seed written by the code itself: 3 centers of 8, two history-less chunks.
    let seed_dir = tempfile::tempdir().unwrap();
    let config = ClusteringConfig::new(3, 8);
    let centers = Centers::from_rows(3, 8, (0..24).map(|i| (i % 5) as f32 - 2.0).collect()).unwrap();
    let chunks = [ChunkFingerprint { path: "a.npz".into(), size: 10, modified_ns: "1".into() }];
    Checkpoint::write(seed_dir.path(), &config, &centers, &[], &chunks, false).unwrap();
    let seeds = vec![std::fs::read(Checkpoint::path_in(seed_dir.path())).unwrap()];
    let dir = tempfile::tempdir().unwrap();
    fuzz("checkpoint", seeds, 1000, false, |bytes| {
        std::fs::write(Checkpoint::path_in(dir.path()), bytes).unwrap();
        match Checkpoint::load(dir.path()) {
            Ok(cp) => {
                let cp = cp.expect("the file is there");
                assert_eq!(cp.centers.data.len(), cp.centers.k * cp.centers.d);
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("checkpoint.safetensors"), "errors name the file: {e}");
                false
            }
        }
    });
}

#[test]
fn safetensors_chunk_reader_survives_mutated_files() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    // Seeds written by the safetensors crate: bfloat16 and float32 activations, with a mask and ids.
    let acts: Vec<u8> = (0..2 * 5 * 8).flat_map(|i| half::bf16::from_f32((i as f32 * 0.37).sin()).to_le_bytes()).collect();
    let acts32: Vec<u8> = (0..2 * 5 * 8).flat_map(|i| ((i as f32 * 0.37).sin()).to_le_bytes()).collect();
    let mask = vec![1u8, 1, 1, 0, 0, 1, 1, 1, 1, 0];
    let ids: Vec<u8> = (0..10i64).flat_map(|i| i.to_le_bytes()).collect();
    let seed = |dtype, data: &[u8]| {
        let tensors = vec![
            ("activations", TensorView::new(dtype, vec![2, 5, 8], data).unwrap()),
            ("attention_mask", TensorView::new(Dtype::BOOL, vec![2, 5], &mask).unwrap()),
            ("token_ids", TensorView::new(Dtype::I64, vec![2, 5], &ids).unwrap()),
        ];
        safetensors::serialize(tensors, None).unwrap()
    };
    let seeds = vec![seed(Dtype::BF16, &acts), seed(Dtype::F32, &acts32)];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.safetensors");
    fuzz("safetensors", seeds, 1500, false, chunk_target(&path));
}

#[test]
fn npy_chunk_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.npy");
    fuzz("npy-chunk", corpus(&["fixtures"], "npy"), 1500, false, chunk_target(&path));
}

#[test]
fn arrow_chunk_reader_survives_mutated_files() {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Int32Builder, ListBuilder};
    use arrow_array::{ArrayRef, RecordBatch};
    // Seeds written by arrow-rs as `datasets` lays them out: list<list<float32>> and a
    // fixed-size list of int32 ids, as an IPC stream and as an IPC file.
    let mut column = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
    let mut ids = FixedSizeListBuilder::new(Int32Builder::new(), 3);
    for b in 0..2 {
        for s in 0..3 {
            column.values().values().append_slice(&[(b * 3 + s) as f32, 0.5, -1.0, 2.0]);
            column.values().append(true);
            ids.values().append_value(b * 3 + s);
        }
        column.append(true);
        ids.append(true);
    }
    let batch = RecordBatch::try_from_iter([("acts", std::sync::Arc::new(column.finish()) as ArrayRef), ("token_ids", std::sync::Arc::new(ids.finish()) as ArrayRef)]).unwrap();
    let mut stream = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut stream, &batch.schema()).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    let mut file = Vec::new();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(&mut file, &batch.schema()).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.arrow");
    fuzz("arrow", vec![stream, file], 1500, false, chunk_target(&path));
}
