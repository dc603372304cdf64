//! Streaming over chunk files: the read-ahead visitor, chunk names, progress reports and the
//! reservoir slot that samples a stream. Shared by the fit, transform and analysis.

use crate::error::{Error, Result};
use crate::chunk::{Activations, Chunk};
use crate::sources::{blocks, chunk_shape, format_of, Format, BLOCK_BYTES};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

/// Which part of a fit is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Sampling tokens for k-means++.
    Init,
    /// An iteration's pass.
    Iterate,
    /// The final pass that writes outputs.
    Output,
    /// A pass of `analysis::analyze_chunks`.
    Analyze,
}

/// Reported after every chunk.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: Phase,
    /// 1-based iteration (0 outside iterations).
    pub iteration: usize,
    pub n_iterations: usize,
    /// 1-based chunk just finished.
    pub chunk: usize,
    pub n_chunks: usize,
    /// Real tokens processed so far in this pass.
    pub tokens_done: u64,
    pub tokens_per_s: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn report(progress: &mut dyn FnMut(&Progress), phase: Phase, iteration: usize, n_iterations: usize, i: usize, n_chunks: usize, tokens_done: u64, started: Instant) {
    progress(&Progress {
        phase,
        iteration,
        n_iterations,
        chunk: i + 1,
        n_chunks,
        tokens_done,
        tokens_per_s: tokens_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
    });
}

/// File names of the chunks; output files are named after them, so they must be distinct.
pub fn chunk_names(chunks: &[PathBuf]) -> Result<Vec<String>> {
    if chunks.is_empty() {
        return Err(Error::invalid_input("chunks", "no chunk files were given"));
    }
    let (mut outputs, mut files) = (HashSet::new(), HashSet::new());
    chunks
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let output = crate::memberships_file::file_name_for(&name);
            if !outputs.insert(output.clone()) {
                return Err(Error::invalid_input(
                    &p.display().to_string(),
                    format!("another chunk also writes {output}; output files are named after chunks, so their names (without .npz) must differ"),
                ));
            }
            // The same file under two names (a link) would be counted twice.
            if let Ok(real) = p.canonicalize() {
                if !files.insert(real.clone()) {
                    return Err(Error::invalid_input(&p.display().to_string(), format!("is the same file as another chunk ({})", real.display())));
                }
            }
            Ok(name)
        })
        .collect()
}

/// Visits every chunk in order while the next ones are read and decoded on other threads
/// (`read_ahead` of them at once, each thread reading every `read_ahead`-th file). A large
/// safetensors or `.npy` file comes as several blocks (`sources::blocks`), each visited with its
/// file's index. A chunk the visitor hands back has its activations buffer read into again for a
/// later one (`memory::array_to_fill`); one it keeps is its own. `spares` are such buffers to
/// start with, and hold the last ones when the pass is over, for the next pass.
pub fn stream_chunks(paths: &[PathBuf], d_model: usize, spares: &mut Vec<Activations>, visit: impl FnMut(usize, Chunk) -> Result<Option<Chunk>>) -> Result<()> {
    stream_chunks_with(read_ahead(paths), paths, d_model, spares, visit)
}

/// Files read at once ahead of the visitor: one per core up to 4, while two buffers per reader
/// (the block it reads or waits to hand over, and one to reuse) of the largest file (8 bytes a
/// value; one block of at most `sources::BLOCK_BYTES` or the `--max-chunk-bytes` limit for the
/// formats always read in blocks) take at most a quarter of the available memory; one where that
/// cannot be read (not Linux) or a header cannot. A deflated `.npz` member inflates on one core:
/// on this 2-core VM two readers made streamed passes over 12 deflated chunks 1.4-1.7x faster,
/// and passes over stored chunks (read in pieces on every core anyway) about as fast as one
/// (benches/RESULTS.md). Reads every file's header.
pub fn read_ahead(paths: &[PathBuf]) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let block = crate::memory::max_chunk_bytes().map_or(BLOCK_BYTES as u64, |(limit, _)| limit.min(BLOCK_BYTES as u64));
    let largest = paths.iter().try_fold(0u64, |most, p| {
        let (b, s, d) = chunk_shape(p).ok()?;
        let whole = ((b * s * d) as u64).saturating_mul(8);
        let bytes = if matches!(format_of(p).ok()?, Format::Safetensors | Format::Arrow) { whole.min(block) } else { whole };
        Some(most.max(bytes))
    });
    let by_memory = match (largest, crate::memory::available_memory()) {
        (Some(bytes), Some(available)) => (available / 4 / bytes.max(1) / 2) as usize,
        _ => 1,
    };
    cores.min(4).min(by_memory).min(paths.len()).max(1)
}

/// `stream_chunks` with `readers` reading threads. Each holds at most the block it reads or has
/// read, so at most `readers + 1` blocks are alive (and about `2 x readers` buffers allocated);
/// a visitor that stops (an error) drops the channels, and every reader ends at its next send.
pub fn stream_chunks_with(readers: usize, paths: &[PathBuf], d_model: usize, spares: &mut Vec<Activations>, mut visit: impl FnMut(usize, Chunk) -> Result<Option<Chunk>>) -> Result<()> {
    let readers = readers.clamp(1, paths.len().max(1));
    let mut handed: Vec<Vec<Activations>> = (0..readers).map(|_| Vec::new()).collect();
    for (i, spare) in std::mem::take(spares).into_iter().enumerate() {
        handed[i % readers].push(spare);
    }
    std::thread::scope(|scope| {
        let (mut blocks_rx, mut spares_tx, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for (r, mine) in handed.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(0);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Activations>();
            threads.push(scope.spawn(move || {
                mine.into_iter().for_each(crate::memory::offer_spare);
                read_files(paths.iter().skip(r).step_by(readers), d_model, &tx, &spare_rx);
                // The last blocks come back after the last read: their buffers go to the next pass.
                drop(tx);
                spare_rx.iter().for_each(crate::memory::offer_spare);
                crate::memory::take_spares()
            }));
            blocks_rx.push(rx);
            spares_tx.push(spare_tx);
        }
        let visited = (|| {
            for (i, path) in paths.iter().enumerate() {
                let r = i % readers;
                // A file's last block has first_row + batch = file_batch.
                let mut last = false;
                while !last {
                    // Only a panic ends a reader without a word; it is raised again below.
                    let chunk = blocks_rx[r].recv().map_err(|_| Error::invalid_input(&path.display().to_string(), "its reading thread stopped"))??;
                    last = chunk.first_row + chunk.batch >= chunk.file_batch;
                    if let Some(done) = visit(i, chunk)? {
                        let _ = spares_tx[r].send(done.activations);
                    }
                }
            }
            Ok(())
        })();
        (drop(blocks_rx), drop(spares_tx));
        for thread in threads {
            match thread.join() {
                Ok(kept) => spares.extend(kept),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        visited
    })
}

/// One reading thread's work: the blocks of `paths` in order, until a block is bad or the visitor
/// has stopped listening.
fn read_files<'a>(paths: impl Iterator<Item = &'a PathBuf>, d_model: usize, tx: &SyncSender<Result<Chunk>>, spare_rx: &Receiver<Activations>) {
    let block_bytes = crate::memory::max_chunk_bytes().map_or(BLOCK_BYTES, |(limit, _)| BLOCK_BYTES.min(limit as usize));
    for path in paths {
        let mut blocks = match blocks(path, block_bytes) {
            Ok(blocks) => blocks,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for at in 0.. {
            spare_rx.try_iter().for_each(crate::memory::offer_spare);
            let Some(chunk) = blocks.next() else {
                if at == 0 {
                    // The visitor waits for this file's last block; every reader yields one.
                    let _ = tx.send(Err(Error::bad_chunk(path, "activations", "yields no block of data")));
                    return;
                }
                break;
            };
            let chunk = chunk.and_then(|c| c.check_d_model(d_model).map(|()| c));
            let failed = chunk.is_err();
            if tx.send(chunk).is_err() || failed {
                return; // the visitor stopped, or this block was bad
            }
        }
    }
}

/// `stream_chunks` for a visitor that keeps no chunk, in one pass.
pub fn visit_chunks(paths: &[PathBuf], d_model: usize, mut visit: impl FnMut(usize, &Chunk) -> Result<()>) -> Result<()> {
    stream_chunks(paths, d_model, &mut Vec::new(), |i, chunk| visit(i, &chunk).map(|()| Some(chunk)))
}

/// Algorithm R: where the `seen`-th item (0-based) of a stream goes in a uniform sample of at most
/// `capacity` items: the next free slot while there is one, then a random slot or nowhere.
pub fn reservoir_slot(rng: &mut ChaCha8Rng, seen: u64, capacity: usize) -> Option<usize> {
    if (seen as usize) < capacity {
        Some(seen as usize)
    } else {
        let j = rng.random_range(0..=seen);
        (j < capacity as u64).then_some(j as usize)
    }
}

