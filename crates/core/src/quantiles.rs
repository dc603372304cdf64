//! Examples across the whole range of a cluster's memberships (docs/algorithm.md "Quantile
//! examples"), as SAEDashboard shows them beside the top activations: per cluster, the nonzero
//! memberships fall into `B` equal bins of `p` (`quantileBins`; bin `b` holds `b / B <= p < (b + 1) / B`,
//! the last one up to 1), and each bin keeps a uniform sample of `Q` tokens (`quantileExamples`)
//! with their context. The sample is the tokens with the smallest keys, a hash of the seed and the
//! token's location: it depends neither on the order the tokens come in nor on how they are split
//! among passes, devices or ranks, so two samples merge by keeping the smallest keys of both.
//! Memory: `K x bins x examples` entries.

use crate::chunk::Chunk;
use crate::exemplars::{visit_candidates, Candidates, Exemplar, Location};
use crate::kernels::PassOutput;

/// Bins of membership per cluster, by default (`quantileBins`).
pub const QUANTILE_BINS: usize = 10;
/// Examples kept per bin, by default (`quantileExamples`).
pub const QUANTILE_EXAMPLES: usize = 5;

/// The bin of a membership `p` in (0, 1] among `bins`.
pub fn bin_of(p: f32, bins: usize) -> usize {
    ((p.max(0.0) * bins as f32) as usize).min(bins - 1)
}

/// splitmix64: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sampling key of a token: the sample keeps the smallest.
pub fn key(seed: u64, at: Location) -> u64 {
    mix(mix(mix(seed ^ at.0 as u64) ^ at.1 as u64) ^ at.2 as u64)
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantileSample {
    seed: u64,
    /// Bins per cluster (at least 1) and examples per bin.
    per_cluster: usize,
    per_bin: usize,
    /// `[cluster * per_cluster + bin]`: (key, example), smallest key first.
    bins: Vec<Vec<(u64, Exemplar)>>,
}

impl QuantileSample {
    /// `k` clusters of `bins` bins of `per_bin` examples.
    pub fn new(k: usize, bins: usize, per_bin: usize, seed: u64) -> Self {
        let bins = bins.max(1);
        QuantileSample { seed, per_cluster: bins, per_bin, bins: vec![Vec::new(); k * bins] }
    }

    fn slot(&self, cluster: usize, value: f32) -> usize {
        cluster * self.per_cluster + bin_of(value, self.per_cluster)
    }

    fn would_accept(&self, cluster: usize, value: f32, at: Location) -> bool {
        let kept = &self.bins[self.slot(cluster, value)];
        self.per_bin > 0 && (kept.len() < self.per_bin || kept.last().is_some_and(|(worst, e)| (key(self.seed, at), at) < (*worst, e.location())))
    }

    /// Offers a token to its cluster's bin (by its membership); kept when its key is among the
    /// smallest `per_bin` (ties: the earliest location).
    pub fn offer(&mut self, cluster: usize, example: Exemplar) {
        if !self.would_accept(cluster, example.value, example.location()) {
            return;
        }
        let k = key(self.seed, example.location());
        let (slot, per_bin) = (self.slot(cluster, example.value), self.per_bin);
        let kept = &mut self.bins[slot];
        let at = kept.partition_point(|(other, e)| (*other, e.location()) < (k, example.location()));
        kept.insert(at, (k, example));
        kept.truncate(per_bin);
    }

    /// Offers every nonzero membership of a chunk, with its context when it is kept.
    pub fn collect(&mut self, chunk: &Chunk, chunk_index: usize, out: &PassOutput, w: usize) {
        visit_candidates(chunk, chunk_index, out, w, self);
    }

    /// Adds every example of `other` (same K, sizes and seed); the result does not depend on the order.
    pub fn merge(&mut self, other: QuantileSample) {
        for (i, kept) in other.bins.into_iter().enumerate() {
            for (_, e) in kept {
                self.offer(i / other.per_cluster, e);
            }
        }
    }

    /// `[cluster][bin]`: the examples of each bin, highest membership first.
    pub fn into_bins(self) -> Vec<Vec<Vec<Exemplar>>> {
        let (k, per_cluster) = (self.bins.len() / self.per_cluster, self.per_cluster);
        let mut bins = self.bins.into_iter();
        (0..k)
            .map(|_| {
                (0..per_cluster)
                    .map(|_| {
                        let mut list: Vec<Exemplar> = bins.next().unwrap_or_default().into_iter().map(|(_, e)| e).collect();
                        list.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.location().cmp(&b.location())));
                        list
                    })
                    .collect()
            })
            .collect()
    }

    /// A sample of `per_bin` examples per bin holding `examples` (`[cluster][bin]`, as
    /// `into_bins` gives them), e.g. from a model file.
    pub fn from_bins(per_bin: usize, seed: u64, examples: &[Vec<Vec<Exemplar>>]) -> Self {
        let bins = examples.first().map_or(QUANTILE_BINS, Vec::len);
        let mut sample = QuantileSample::new(examples.len(), bins, per_bin, seed);
        for (c, bins) in examples.iter().enumerate() {
            for e in bins.iter().flatten() {
                sample.offer(c, e.clone());
            }
        }
        sample
    }
}

impl Candidates for QuantileSample {
    fn wants(&self, cluster: usize, value: f32, at: Location) -> bool {
        self.would_accept(cluster, value, at)
    }
    fn keep(&mut self, cluster: usize, exemplar: Exemplar) {
        self.offer(cluster, exemplar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(value: f32, chunk: usize, batch: usize, position: usize) -> Exemplar {
        Exemplar { value, chunk, batch, position, tokens: vec![], context_memberships: vec![] }
    }

    #[test]
    fn bins_cover_zero_to_one() {
        assert_eq!((bin_of(0.01, 10), bin_of(0.1, 10), bin_of(0.19, 10), bin_of(0.95, 10), bin_of(1.0, 10)), (0, 1, 1, 9, 9));
    }

    #[test]
    fn the_sample_is_the_same_in_any_order_and_merges() {
        let all: Vec<Exemplar> = (0..300).map(|i| ex(((i * 37) % 100) as f32 / 100.0 + 0.001, i % 4, i, i % 7)).collect();
        let mut one = QuantileSample::new(1, QUANTILE_BINS, QUANTILE_EXAMPLES, 3);
        all.iter().for_each(|e| one.offer(0, e.clone()));
        let mut reversed = QuantileSample::new(1, QUANTILE_BINS, QUANTILE_EXAMPLES, 3);
        all.iter().rev().for_each(|e| reversed.offer(0, e.clone()));
        assert_eq!(one.clone().into_bins(), reversed.into_bins());
        let (mut a, mut b) = (QuantileSample::new(1, QUANTILE_BINS, QUANTILE_EXAMPLES, 3), QuantileSample::new(1, QUANTILE_BINS, QUANTILE_EXAMPLES, 3));
        for (i, e) in all.iter().enumerate() {
            if i % 3 == 0 { a.offer(0, e.clone()) } else { b.offer(0, e.clone()) }
        }
        a.merge(b);
        let bins = one.into_bins();
        assert_eq!(a.into_bins(), bins);
        for (b, list) in bins[0].iter().enumerate() {
            assert_eq!(list.len(), QUANTILE_EXAMPLES, "bin {b}");
            assert!(list.iter().all(|e| bin_of(e.value, QUANTILE_BINS) == b));
        }
        let mut other_seed = QuantileSample::new(1, QUANTILE_BINS, QUANTILE_EXAMPLES, 4);
        all.iter().for_each(|e| other_seed.offer(0, e.clone()));
        assert_ne!(other_seed.into_bins(), bins);
    }
}
