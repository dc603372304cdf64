//! Streaming over chunk files with several reading threads (`stream::stream_chunks_with`): the
//! visitor sees every block in file order whatever the number of readers, a bad file ends the
//! stream at its place and by its name, and a visitor that stops ends every reader.

mod common;
use common::*;
use soft_cluster_core::memory::set_max_chunk_bytes;
use soft_cluster_core::stream::{read_ahead, stream_chunks_with};
use soft_cluster_core::{Activations, Error};
use std::path::PathBuf;

const D: usize = 8;
const S: usize = 4;

/// (file index, first sequence, activations) of every block, as the visitor saw them.
type Seen = Vec<(usize, usize, Activations)>;

fn stream(readers: usize, paths: &[PathBuf], stop_at: Option<usize>) -> (Seen, Result<(), Error>, usize) {
    let (mut seen, mut spares) = (Vec::new(), Vec::new());
    let result = stream_chunks_with(readers, paths, D, &mut spares, |i, chunk| {
        if stop_at == Some(i) {
            return Err(Error::Config { field: "test".into(), problem: "the visitor stops".into() });
        }
        seen.push((i, chunk.first_row, chunk.activations.clone()));
        Ok(Some(chunk))
    });
    (seen, result, spares.len())
}

// One test: it sets the process-wide block size.
#[test]
fn every_number_of_readers_visits_the_same_blocks_in_file_order_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Three sequences: an .npz member of two (with its 128-byte header) still fits.
    let block_bytes = 3 * S * D * 4;
    // Even places: .npz chunks of 2 sequences (one block); odd: .npy files of 5 sequences, read
    // in blocks of 3 and 2.
    let paths: Vec<PathBuf> = (0..7)
        .map(|f| {
            let b = if f % 2 == 0 { 2 } else { 5 };
            let acts: Vec<f32> = (0..b * S * D).map(|i| (f * 1000 + i) as f32 + 0.5).collect();
            if f % 2 == 0 {
                let p = dir.path().join(format!("chunk_{f}.npz"));
                write_chunk(&p, b, S, D, &acts, None, None);
                p
            } else {
                let p = dir.path().join(format!("chunk_{f}.npy"));
                std::fs::write(&p, npy_bytes("<f4", false, &[b, S, D], &acts.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())).unwrap();
                p
            }
        })
        .collect();
    let expected: Seen = paths
        .iter()
        .enumerate()
        .flat_map(|(i, p)| soft_cluster_core::sources::blocks(p, block_bytes).unwrap().map(move |b| b.map(|c| (i, c.first_row, c.activations)).unwrap()))
        .collect();
    assert_eq!(expected.len(), 4 + 3 * 2);
    set_max_chunk_bytes(Some(block_bytes as u64));
    let mut bad = paths.clone();
    bad[4] = dir.path().join("chunk_4_bad.npz");
    std::fs::write(&bad[4], b"not a chunk").unwrap();
    let before_bad = expected.iter().filter(|(i, _, _)| *i < 4).count();
    for readers in 1..=4 {
        let (seen, result, spares) = stream(readers, &paths, None);
        result.unwrap();
        assert_eq!(seen, expected, "{readers} readers");
        assert!((1..=2 * readers).contains(&spares), "{readers} readers: {spares} spare buffers");

        let (seen, result, _) = stream(readers, &bad, None);
        assert_eq!(seen[..], expected[..before_bad], "{readers} readers: what comes before the bad file");
        let err = result.unwrap_err();
        assert!(err.to_string().contains("chunk_4_bad.npz"), "{readers} readers: {err}");

        let (seen, result, _) = stream(readers, &paths, Some(2));
        assert_eq!(seen[..], expected[..3], "{readers} readers: files 0 and 1 (3 blocks) before the visitor stops");
        assert!(result.unwrap_err().to_string().contains("the visitor stops"));
    }
    set_max_chunk_bytes(None);
    // Small files: a reader per core, up to 4 and the number of files (where the available
    // memory can be read); a file whose header cannot be read: one.
    let cores = std::thread::available_parallelism().unwrap().get();
    if cfg!(target_os = "linux") {
        assert_eq!(read_ahead(&paths), cores.min(4));
    }
    assert_eq!(read_ahead(&bad), 1);
    assert_eq!(read_ahead(&paths[..1]), 1);
    assert_eq!(read_ahead(&[]), 1);
}
