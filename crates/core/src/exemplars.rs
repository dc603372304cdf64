//! Bounded top-k exemplar heaps (docs/algorithm.md "Exemplars"): for each cluster, the `nExemplars` real tokens with the
//! largest membership, ties broken by the earliest (chunk, batch, position). Memory is
//! `K * nExemplars` entries whatever the data size.

use crate::kernels::PassOutput;
use crate::chunk::Chunk;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Where a token is: chunk index in the run, sequence, position.
pub type Location = (usize, usize, usize);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exemplar {
    pub value: f32,
    pub chunk: usize,
    pub batch: usize,
    pub position: usize,
    /// Token ids of `position - w ..= position + w` (-1 outside the sequence, at padding, or
    /// when the chunk has no token ids).
    pub tokens: Vec<i64>,
    /// This cluster's membership at those positions (0 outside, at padding or without a row).
    pub context_memberships: Vec<f32>,
}

impl Exemplar {
    pub fn location(&self) -> Location {
        (self.chunk, self.batch, self.position)
    }
}

/// True when `(value, at)` ranks before `(other_value, other_at)`.
pub fn ranks_before(value: f32, at: Location, other_value: f32, other_at: Location) -> bool {
    value > other_value || (value == other_value && at < other_at)
}

/// Heap order: the greatest entry is the WORST kept exemplar, the one a better candidate evicts.
#[derive(Debug, Clone)]
struct Worst(Exemplar);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0, &other.0);
        if ranks_before(a.value, a.location(), b.value, b.location()) {
            Ordering::Less
        } else if ranks_before(b.value, b.location(), a.value, a.location()) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExemplarHeaps {
    capacity: usize,
    heaps: Vec<BinaryHeap<Worst>>,
}

impl ExemplarHeaps {
    pub fn new(k: usize, capacity: usize) -> Self {
        ExemplarHeaps { capacity, heaps: (0..k).map(|_| BinaryHeap::with_capacity(capacity + 1)).collect() }
    }

    /// Whether a candidate would be kept; checked before its context is gathered.
    pub fn would_accept(&self, cluster: usize, value: f32, at: Location) -> bool {
        let heap = &self.heaps[cluster];
        if heap.len() < self.capacity {
            return self.capacity > 0;
        }
        heap.peek().is_some_and(|worst| ranks_before(value, at, worst.0.value, worst.0.location()))
    }

    pub fn offer(&mut self, cluster: usize, exemplar: Exemplar) {
        if !self.would_accept(cluster, exemplar.value, exemplar.location()) {
            return;
        }
        let heap = &mut self.heaps[cluster];
        heap.push(Worst(exemplar));
        if heap.len() > self.capacity {
            heap.pop();
        }
    }

    /// Adds every entry of `other` (the same `K` and capacity); associative and order-free.
    pub fn merge(&mut self, other: ExemplarHeaps) {
        for (cluster, heap) in other.heaps.into_iter().enumerate() {
            for Worst(e) in heap {
                self.offer(cluster, e);
            }
        }
    }

    /// Per cluster, best first.
    pub fn into_sorted(self) -> Vec<Vec<Exemplar>> {
        self.heaps.into_iter().map(|h| h.into_sorted_vec().into_iter().map(|w| w.0).collect()).collect()
    }
}

/// What keeps some of the tokens a pass offers: the top-k heaps, the quantile sample.
pub trait Candidates {
    /// Whether a token with this membership in `cluster`, at `at`, would be kept (asked before
    /// its context is gathered).
    fn wants(&self, cluster: usize, value: f32, at: Location) -> bool;
    fn keep(&mut self, cluster: usize, exemplar: Exemplar);
}

impl Candidates for ExemplarHeaps {
    fn wants(&self, cluster: usize, value: f32, at: Location) -> bool {
        self.would_accept(cluster, value, at)
    }
    fn keep(&mut self, cluster: usize, exemplar: Exemplar) {
        self.offer(cluster, exemplar)
    }
}

/// Offers every nonzero membership of a chunk to the heaps, with its context when it is kept.
pub fn collect(heaps: &mut ExemplarHeaps, chunk: &Chunk, chunk_index: usize, out: &PassOutput, w: usize) {
    visit_candidates(chunk, chunk_index, out, w, heaps);
}

/// Offers every nonzero membership of a chunk to `sink`, with the token's context (its ids and
/// this cluster's memberships at `position - w ..= position + w`) when `sink` wants it.
pub fn visit_candidates(chunk: &Chunk, chunk_index: usize, out: &PassOutput, w: usize, sink: &mut impl Candidates) {
    let Some(sparse) = &out.sparse else { return };
    let seq = chunk.seq_len;
    let mut row_of = vec![u32::MAX; chunk.n_tokens()];
    for (r, &t) in out.rows.token.iter().enumerate() {
        row_of[t as usize] = r as u32;
    }
    let membership = |t: usize, cluster: u32| -> f32 {
        let r = row_of[t];
        if r == u32::MAX {
            return 0.0;
        }
        let (clusters, values) = sparse.row(r as usize);
        clusters.binary_search(&cluster).map_or(0.0, |i| values[i])
    };
    let is_real = |t: usize| chunk.attention_mask.as_ref().is_none_or(|m| m[t] != 0);
    for (r, &t) in out.rows.token.iter().enumerate() {
        let t = t as usize;
        let (batch, position) = (t / seq, t % seq);
        let file_batch = chunk.first_row + batch;
        let (clusters, values) = sparse.row(r);
        for (&cluster, &value) in clusters.iter().zip(values) {
            if !sink.wants(cluster as usize, value, (chunk_index, file_batch, position)) {
                continue;
            }
            let window = (position as isize - w as isize..=position as isize + w as isize).map(|p| {
                (p >= 0 && (p as usize) < seq).then(|| batch * seq + p as usize).filter(|&u| is_real(u))
            });
            let (tokens, context_memberships) = window
                .map(|u| match u {
                    Some(u) => (chunk.token_ids.as_ref().map_or(-1, |ids| ids[u]), membership(u, cluster)),
                    None => (-1, 0.0),
                })
                .unzip();
            sink.keep(cluster as usize, Exemplar { value, chunk: chunk_index, batch: file_batch, position, tokens, context_memberships });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(value: f32, chunk: usize, batch: usize, position: usize) -> Exemplar {
        Exemplar { value, chunk, batch, position, tokens: vec![], context_memberships: vec![] }
    }

    #[test]
    fn keeps_the_largest_with_earliest_ties_whatever_the_order() {
        let candidates = vec![ex(0.5, 1, 0, 0), ex(0.9, 2, 0, 0), ex(0.5, 0, 3, 1), ex(0.7, 0, 0, 0), ex(0.5, 0, 3, 0), ex(0.1, 0, 0, 1)];
        let want: Vec<Location> = vec![(2, 0, 0), (0, 0, 0), (0, 3, 0)];
        for rotation in 0..candidates.len() {
            let mut heaps = ExemplarHeaps::new(1, 3);
            let mut order = candidates.clone();
            order.rotate_left(rotation);
            order.into_iter().for_each(|e| heaps.offer(0, e));
            let got: Vec<Location> = heaps.into_sorted()[0].iter().map(Exemplar::location).collect();
            assert_eq!(got, want, "rotation {rotation}");
        }
    }

    #[test]
    fn merge_equals_offering_everything_to_one_heap() {
        let all: Vec<Exemplar> = (0..40).map(|i| ex(((i * 7) % 11) as f32, i % 3, i, 0)).collect();
        let mut one = ExemplarHeaps::new(2, 4);
        let (mut a, mut b) = (ExemplarHeaps::new(2, 4), ExemplarHeaps::new(2, 4));
        for (i, e) in all.into_iter().enumerate() {
            one.offer(i % 2, e.clone());
            if i < 17 { a.offer(i % 2, e) } else { b.offer(i % 2, e) }
        }
        a.merge(b);
        assert_eq!(a.into_sorted(), one.into_sorted());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut h = ExemplarHeaps::new(1, 0);
        h.offer(0, ex(1.0, 0, 0, 0));
        assert!(h.into_sorted()[0].is_empty());
    }
}
