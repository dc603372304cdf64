//! A fit over several processes (docs/scaling.md "Many servers"): which chunks each rank reads,
//! the collective operations a rank needs (behind a trait: MPI in `mpi_world`, threads of one
//! process in tests, `OneProcess` for everything else), and the agreement that makes an error on
//! one rank end every rank.

use crate::error::{Error, Result};
use crate::exemplars::{Exemplar, ExemplarHeaps};
use crate::pass::{Farthest, PassStats};
use crate::quantiles::QuantileSample;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};

/// The chunks of each of `ranks` ranks, balanced by token counts: chunks by decreasing size
/// (ties: earlier first) go to the rank with the fewest tokens so far (ties: the lower rank);
/// each rank's list is in the run's chunk order. Deterministic: every rank computes the same.
pub fn assign_chunks(tokens_per_chunk: &[u64], ranks: usize) -> Vec<Vec<usize>> {
    let ranks = ranks.max(1);
    let mut order: Vec<usize> = (0..tokens_per_chunk.len()).collect();
    order.sort_by(|&a, &b| tokens_per_chunk[b].cmp(&tokens_per_chunk[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; ranks];
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); ranks];
    for chunk in order {
        let rank = (0..ranks).min_by_key(|&r| (load[r], r)).expect("at least one rank");
        load[rank] += tokens_per_chunk[chunk];
        lists[rank].push(chunk);
    }
    lists.iter_mut().for_each(|l| l.sort_unstable());
    lists
}

/// This rank's part of a run: its chunk files, in run order, their numbers among all the run's
/// chunks (exemplar locations and reseed candidates use those), and the place of each one's first
/// token among all the run's tokens (padding included; the init sample's keys use it, so that the
/// sample depends neither on the ranks nor on how the tokens are split into files).
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub paths: Vec<PathBuf>,
    pub ids: Vec<usize>,
    pub first_token: Vec<u64>,
}

impl Share {
    /// Every chunk: a run in one process.
    pub fn all(paths: &[PathBuf]) -> Result<Share> {
        Share::of(paths, &OneProcess)
    }

    /// This rank's chunks under `assign_chunks`, by the token counts in the chunk headers.
    pub fn of(paths: &[PathBuf], comm: &dyn Collective) -> Result<Share> {
        let tokens = paths
            .iter()
            .map(|p| crate::sources::chunk_shape(p).map(|(b, s, _)| b as u64 * s as u64))
            .collect::<Result<Vec<u64>>>()?;
        let starts: Vec<u64> = tokens.iter().scan(0u64, |at, &n| Some(std::mem::replace(at, *at + n))).collect();
        let ids = assign_chunks(&tokens, comm.size()).swap_remove(comm.rank());
        Ok(Share { paths: ids.iter().map(|&i| paths[i].clone()).collect(), first_token: ids.iter().map(|&i| starts[i]).collect(), ids })
    }
}

/// What a rank asks of the others. Every rank makes the same calls in the same order.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum of `values` over the ranks; every rank gets the same sum.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
    /// Every rank's bytes, in rank order, on every rank.
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>>;
    /// Rank 0's `bytes` on every rank (what the others pass is ignored).
    fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(self.all_gather(bytes)?.swap_remove(0))
    }
    /// Every rank's bytes on rank 0, in rank order; the other ranks get an empty list.
    fn gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let all = self.all_gather(bytes)?;
        Ok(if self.rank() == 0 { all } else { Vec::new() })
    }
    /// Ranks on this machine, this one included: they share its memory.
    fn on_this_machine(&self) -> usize {
        1
    }
}

/// A run in one process: rank 0 of 1.
pub struct OneProcess;

impl Collective for OneProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes])
    }
}

/// Every rank's `result` of a step: `Ok` on every rank when every rank succeeded, else the error
/// of the lowest failing rank, on every rank (`Error::OnRank`, naming that rank). Called by every
/// rank after each step that can fail on one rank alone, so that no rank waits forever for one
/// that gave up. In one process, `result` itself.
pub fn agree<T>(comm: &dyn Collective, result: Result<T>) -> Result<T> {
    if comm.size() == 1 {
        return result;
    }
    let mine = match &result {
        Ok(_) => Vec::new(),
        Err(Error::OnRank { rank, code, message, .. }) => format!("{code}\0{rank}\0{message}").into_bytes(),
        Err(e) => format!("{}\0{}\0{e}", e.code(), comm.rank()).into_bytes(),
    };
    let all = comm.all_gather(mine)?;
    match all.iter().find(|b| !b.is_empty()) {
        None => result,
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let mut parts = text.splitn(3, '\0');
            let (code, rank, message) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            Err(Error::OnRank { rank: rank.parse().unwrap_or(0), size: comm.size(), code: Error::code_named(code), message: message.to_string() })
        }
    }
}

/// Ranks that are threads of one process (tests, and the reference the MPI implementation must
/// equal): `ThreadRanks::new(n)` gives one handle per rank.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Option<Vec<u8>>>>,
}

impl ThreadRanks {
    pub fn new(size: usize) -> Vec<ThreadRanks> {
        let shared = Arc::new(Shared { size, barrier: Barrier::new(size), slots: Mutex::new(vec![None; size]) });
        (0..size).map(|rank| ThreadRanks { rank, shared: shared.clone() }).collect()
    }
}

impl Collective for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn on_this_machine(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.all_gather(bytes)?;
        values.iter_mut().for_each(|v| *v = 0.0);
        for part in &all {
            if part.len() != values.len() * 8 {
                return Err(Error::invalid_input("all_reduce_sum", format!("ranks gave {} and {} values", part.len() / 8, values.len())));
            }
            values.iter_mut().zip(part.chunks_exact(8)).for_each(|(v, b)| *v += f64::from_le_bytes(b.try_into().expect("8 bytes")));
        }
        Ok(())
    }

    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let s = &self.shared;
        s.slots.lock().expect("a rank panicked")[self.rank] = Some(bytes);
        s.barrier.wait();
        let all: Vec<Vec<u8>> = s.slots.lock().expect("a rank panicked").iter().map(|b| b.clone().expect("every rank wrote")).collect();
        // Nobody writes the next round's slots before everyone has read this one.
        s.barrier.wait();
        Ok(all)
    }
}

/// Rank 0's `values` on every rank (f32, little-endian on the wire).
pub fn broadcast_f32s(comm: &dyn Collective, values: &mut Vec<f32>) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let bytes = comm.broadcast(if comm.rank() == 0 { bytemuck::cast_slice(values).to_vec() } else { Vec::new() })?;
    *values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    Ok(())
}

/// Makes every rank's `values` rank 0's where a rank computed other bits: each rank's CRC-32 is
/// compared first, and the values cross only when they differ (a GEMM that rounds differently on
/// another machine). Returns whether they did.
pub fn align_with_rank0(comm: &dyn Collective, values: &mut Vec<f32>) -> Result<bool> {
    if comm.size() == 1 {
        return Ok(false);
    }
    let crc = crc32fast::hash(bytemuck::cast_slice(values)).to_le_bytes().to_vec();
    let all = comm.all_gather(crc)?;
    if all.iter().all(|c| *c == all[0]) {
        return Ok(false);
    }
    broadcast_f32s(comm, values)?;
    Ok(true)
}

/// Sums a pass's statistics over the ranks: afterwards every rank holds the value one process
/// would have merged from all the chunks (sums in float64, added in rank order; the reseed
/// candidates gathered and kept as `PassStats::merge` keeps them).
pub fn all_reduce_stats(stats: &mut PassStats, comm: &dyn Collective) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let k = stats.k;
    // S in place (512 MiB at K = 16384, D = 4096: no copy of it), then one small buffer: m, hard
    // counts, objective, rows, skipped (counts are exact in f64 up to 2^53).
    comm.all_reduce_sum(&mut stats.s)?;
    let mut buf: Vec<f64> = Vec::with_capacity(2 * k + 3);
    buf.extend_from_slice(&stats.mass);
    buf.extend(stats.hard_count.iter().map(|&c| c as f64));
    buf.extend([stats.objective_sum, stats.n_rows as f64, stats.skipped as f64]);
    comm.all_reduce_sum(&mut buf)?;
    let (mass, rest) = buf.split_at(k);
    let (hard, rest) = rest.split_at(k);
    stats.mass.copy_from_slice(mass);
    stats.hard_count.iter_mut().zip(hard).for_each(|(c, &v)| *c = v as u64);
    stats.objective_sum = rest[0];
    stats.n_rows = rest[1] as u64;
    stats.skipped = rest[2] as u64;
    // Reseed candidates: every rank's, merged as chunks' are.
    let mine = encode_farthest(&stats.farthest);
    let mut merged = PassStats::without_sums(k, stats.d);
    for bytes in comm.all_gather(mine)? {
        let mut part = PassStats::without_sums(k, stats.d);
        part.farthest = decode_farthest(&bytes, stats.d)?;
        merged.merge(part);
    }
    stats.farthest = merged.farthest;
    Ok(())
}

/// Offers every rank's exemplars and quantile examples to rank 0's (merges that do not depend
/// on the order: rank 0 ends with what one process would keep); the other ranks' are left as
/// they are, unused.
pub fn gather_exemplars(heaps: &mut ExemplarHeaps, quantiles: &mut QuantileSample, comm: &dyn Collective) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = if comm.rank() == 0 {
        Vec::new()
    } else {
        let mut wire = Vec::new();
        let top = heaps.clone().into_sorted();
        let bins = quantiles.clone().into_bins();
        put_exemplars(&mut wire, top.iter().enumerate().flat_map(|(c, list)| list.iter().map(move |e| (c, e))));
        put_exemplars(&mut wire, bins.iter().enumerate().flat_map(|(c, bins)| bins.iter().flatten().map(move |e| (c, e))));
        wire
    };
    for part in comm.gather(mine)?.iter().skip(1) {
        let mut at = 0;
        for (cluster, e) in take_exemplars(part, &mut at)? {
            heaps.offer(cluster, e);
        }
        for (cluster, e) in take_exemplars(part, &mut at)? {
            quantiles.offer(cluster, e);
        }
    }
    Ok(())
}

fn put_exemplars<'a>(wire: &mut Vec<u8>, list: impl Iterator<Item = (usize, &'a Exemplar)>) {
    let list: Vec<_> = list.collect();
    wire.extend((list.len() as u64).to_le_bytes());
    for (cluster, e) in list {
        for v in [cluster, e.chunk, e.batch, e.position, e.tokens.len(), e.context_memberships.len()] {
            wire.extend((v as u64).to_le_bytes());
        }
        wire.extend(e.value.to_le_bytes());
        e.tokens.iter().for_each(|t| wire.extend(t.to_le_bytes()));
        e.context_memberships.iter().for_each(|m| wire.extend(m.to_le_bytes()));
    }
}

fn take_exemplars(wire: &[u8], at: &mut usize) -> Result<Vec<(usize, Exemplar)>> {
    let mut take = |n: usize| -> Result<&[u8]> {
        let piece = wire.get(*at..*at + n).ok_or_else(|| Error::invalid_input("exemplars from a rank", format!("{} bytes end before entry data at {}", wire.len(), *at)))?;
        *at += n;
        Ok(piece)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
    let count = u64_of(take(8)?);
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let head: Vec<usize> = take(48)?.chunks_exact(8).map(u64_of).collect();
        let value = f32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let tokens = take(head[4].saturating_mul(8))?.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        let context_memberships = take(head[5].saturating_mul(4))?.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        out.push((head[0], Exemplar { value, chunk: head[1], batch: head[2], position: head[3], tokens, context_memberships }));
    }
    Ok(out)
}

fn encode_farthest(list: &[Farthest]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in list {
        out.extend(f.best_cos.to_le_bytes());
        out.extend((f.chunk as u64).to_le_bytes());
        out.extend((f.token as u64).to_le_bytes());
        f.vector.iter().for_each(|v| out.extend(v.to_le_bytes()));
    }
    out
}

fn decode_farthest(bytes: &[u8], d: usize) -> Result<Vec<Farthest>> {
    let size = 4 + 8 + 8 + 4 * d;
    if bytes.len() % size != 0 {
        return Err(Error::invalid_input("reseed candidates", format!("{} bytes from a rank are not whole entries of {size}", bytes.len())));
    }
    let f32_at = |b: &[u8]| f32::from_le_bytes(b.try_into().expect("4 bytes"));
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
    Ok(bytes
        .chunks_exact(size)
        .map(|e| Farthest { best_cos: f32_at(&e[0..4]), chunk: u64_at(&e[4..12]), token: u64_at(&e[12..20]), vector: e[20..].chunks_exact(4).map(f32_at).collect() })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_balanced_by_tokens_and_every_chunk_is_read_once() {
        assert_eq!(assign_chunks(&[10, 10, 10, 10], 2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(assign_chunks(&[100, 1, 1, 1, 50, 50], 2), vec![vec![0, 1, 3], vec![2, 4, 5]]);
        assert_eq!(assign_chunks(&[5, 7], 3), vec![vec![1], vec![0], vec![]]);
        let sizes: Vec<u64> = (0..37).map(|i| (i * 7919 % 101) as u64 + 1).collect();
        let lists = assign_chunks(&sizes, 3);
        let mut all: Vec<usize> = lists.concat();
        all.sort_unstable();
        assert_eq!(all, (0..37).collect::<Vec<_>>());
        let loads: Vec<u64> = lists.iter().map(|l| l.iter().map(|&c| sizes[c]).sum()).collect();
        let (lo, hi) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
        assert!(hi - lo <= *sizes.iter().max().unwrap(), "{loads:?}");
    }

    fn stats(seed: u64, k: usize, d: usize) -> PassStats {
        let mut s = PassStats::new(k, d);
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        s.s.iter_mut().for_each(|v| *v = next());
        s.mass.iter_mut().for_each(|v| *v = next());
        s.hard_count.iter_mut().for_each(|c| *c = (next() * 100.0) as u64);
        s.objective_sum = next();
        s.n_rows = 1000 + seed;
        s.skipped = seed;
        s.farthest = (0..3).map(|i| Farthest { best_cos: next() as f32, chunk: seed as usize, token: i, vector: (0..d).map(|_| next() as f32).collect() }).collect();
        s.farthest.sort_by(|a, b| a.best_cos.total_cmp(&b.best_cos));
        s
    }

    #[test]
    fn the_reduce_over_thread_ranks_is_the_merge_of_every_rank() {
        let (k, d, n) = (5, 3, 3);
        let mut want = stats(0, k, d);
        (1..n as u64).for_each(|r| want.merge(stats(r, k, d)));
        let handles: Vec<_> = ThreadRanks::new(n)
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let mut mine = stats(comm.rank() as u64, k, d);
                    all_reduce_stats(&mut mine, &comm).unwrap();
                    // A second round reuses the slots.
                    let mut again = stats(comm.rank() as u64, k, d);
                    all_reduce_stats(&mut again, &comm).unwrap();
                    assert_eq!(mine, again);
                    mine
                })
            })
            .collect();
        for h in handles {
            let got = h.join().unwrap();
            assert_eq!((got.n_rows, got.skipped, &got.hard_count), (want.n_rows, want.skipped, &want.hard_count));
            assert_eq!(got.farthest, want.farthest);
            got.s.iter().chain(&got.mass).zip(want.s.iter().chain(&want.mass)).for_each(|(a, b)| assert!((a - b).abs() < 1e-12));
            assert!((got.objective_sum - want.objective_sum).abs() < 1e-12);
        }
    }

    #[test]
    fn centers_that_differ_on_a_rank_become_rank_0s_and_equal_ones_stay() {
        let results: Vec<(bool, Vec<f32>, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRanks::new(3)
                .into_iter()
                .map(|comm| {
                    scope.spawn(move || {
                        let mut same = vec![0.25f32; 1000];
                        let stayed = align_with_rank0(&comm, &mut same).unwrap();
                        // Rank 2 rounded one value the other way.
                        let mut values = vec![0.5f32; 1000];
                        if comm.rank() == 2 {
                            values[999] = f32::from_bits(0.5f32.to_bits() + 1);
                        }
                        let crossed = align_with_rank0(&comm, &mut values).unwrap();
                        (stayed, values, crossed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (stayed, values, crossed)) in results.into_iter().enumerate() {
            assert!(!stayed && crossed, "rank {rank}");
            assert_eq!(values, vec![0.5f32; 1000], "rank {rank}");
        }
    }
}
