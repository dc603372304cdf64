//! Building blocks of a fit over several processes (issue 16, docs/scaling.md "Many servers"):
//! which chunks each rank reads, and the collective operations a rank needs, behind a trait so
//! that the orchestration can be tested with ranks that are threads of one process before an
//! MPI implementation (rsmpi, behind a cargo feature) plugs in. Not used by a fit yet.

use crate::error::{Error, Result};
use crate::pass::{Farthest, PassStats};
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

/// What a rank asks of the others.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Element-wise sum of `values` over the ranks; every rank gets the sum, added in rank order.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
    /// Every rank's bytes, in rank order, on every rank.
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>>;
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

/// Sums a pass's statistics over the ranks: afterwards every rank holds the value one process
/// would have merged from all the chunks (sums in float64, added in rank order; the reseed
/// candidates gathered and kept as `PassStats::merge` keeps them).
pub fn all_reduce_stats(stats: &mut PassStats, comm: &dyn Collective) -> Result<()> {
    let k = stats.k;
    // One buffer: S, m, hard counts, then objective, rows, skipped (counts are exact in f64 up to 2^53).
    let mut buf: Vec<f64> = Vec::with_capacity(stats.s.len() + 2 * k + 3);
    buf.extend_from_slice(&stats.s);
    buf.extend_from_slice(&stats.mass);
    buf.extend(stats.hard_count.iter().map(|&c| c as f64));
    buf.extend([stats.objective_sum, stats.n_rows as f64, stats.skipped as f64]);
    comm.all_reduce_sum(&mut buf)?;
    let (s, rest) = buf.split_at(stats.s.len());
    let (mass, rest) = rest.split_at(k);
    let (hard, rest) = rest.split_at(k);
    stats.s.copy_from_slice(s);
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
}
