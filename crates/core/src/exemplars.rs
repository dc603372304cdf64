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
/// With `distinct`, only tokens that are their window's largest membership (`LocalMaxima`).
pub fn collect(heaps: &mut ExemplarHeaps, chunk: &Chunk, chunk_index: usize, out: &PassOutput, w: usize, distinct: bool) {
    if distinct {
        visit_candidates(chunk, chunk_index, out, w, &mut LocalMaxima(heaps));
    } else {
        visit_candidates(chunk, chunk_index, out, w, heaps);
    }
}

/// Keeps a token only where its membership is the largest of its window (ties: the earliest
/// position), so no two kept tokens of a cluster are within `w` positions of one sequence: each
/// would have to beat the other. A property of the token alone, so heaps stay mergeable and the
/// result does not depend on the order tokens arrive in.
struct LocalMaxima<'a>(&'a mut ExemplarHeaps);

impl Candidates for LocalMaxima<'_> {
    fn wants(&self, cluster: usize, value: f32, at: Location) -> bool {
        self.0.would_accept(cluster, value, at)
    }
    fn keep(&mut self, cluster: usize, exemplar: Exemplar) {
        if is_local_maximum(&exemplar) {
            self.0.offer(cluster, exemplar)
        }
    }
}

/// Whether the exemplar's membership (at the middle of its window) beats every earlier position
/// of its window and is not beaten by any later one.
fn is_local_maximum(e: &Exemplar) -> bool {
    let w = e.context_memberships.len() / 2;
    let (before, after) = (&e.context_memberships[..w], &e.context_memberships[w + 1..]);
    before.iter().all(|&p| p < e.value) && after.iter().all(|&p| p <= e.value)
}

/// Best first, dropping every exemplar within `w` positions of a better one in the same sequence:
/// for lists gathered under other memberships (a merge of clusters), where `LocalMaxima` cannot apply.
pub fn drop_overlapping(list: Vec<Exemplar>, w: usize) -> Vec<Exemplar> {
    let mut kept: Vec<Exemplar> = Vec::with_capacity(list.len());
    for e in list {
        if !kept.iter().any(|k| (k.chunk, k.batch) == (e.chunk, e.batch) && k.position.abs_diff(e.position) <= w) {
            kept.push(e);
        }
    }
    kept
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
    fn distinct_contexts_keep_window_maxima_that_never_overlap() {
        use crate::chunk::{Activations, Chunk};
        use crate::config::{ClusteringConfig, Temperature};
        use crate::kernels::{cpu::CpuBackend, Backend, Centers, MembershipParams, Tokens, Want};
        // One cluster along x; a sequence whose tokens lean more or less towards it, so that
        // neighbours all have large memberships and the window maxima are few.
        let (seq, d, w) = (40usize, 2usize, 3usize);
        let angles: Vec<f32> = (0..seq).map(|t| 0.2 + 0.15 * ((t as f32) * 0.7).sin() + 0.02 * (t % 5) as f32).collect();
        let acts: Vec<f32> = angles.iter().flat_map(|a| [a.cos(), a.sin()]).collect();
        let chunk = Chunk { source: "test".into(), activations: Activations::F32(acts), batch: 1, file_batch: 1, seq_len: seq, d_model: d, attention_mask: None, token_ids: Some((0..seq as i64).collect()), first_row: 0 };
        let centers = Centers::from_rows(2, d, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let mut config = ClusteringConfig::new(2, d);
        config.temperature = Temperature::Fixed(0.3);
        config.min_membership = 0.0;
        let out = CpuBackend::default().run(&centers, &Tokens::from_chunk(&chunk, 0), MembershipParams::try_from(&config).unwrap(), Want { sparse: true, ..Want::default() }).unwrap();
        let kept = |distinct: bool| {
            let mut heaps = ExemplarHeaps::new(2, 10);
            collect(&mut heaps, &chunk, 0, &out, w, distinct);
            heaps.into_sorted().swap_remove(0)
        };
        let close_pairs = |list: &[Exemplar]| list.iter().enumerate().flat_map(|(i, a)| list[i + 1..].iter().map(move |b| a.position.abs_diff(b.position))).filter(|&g| g <= w).count();
        let (all, distinct) = (kept(false), kept(true));
        assert!(close_pairs(&all) > 0, "the plain heap keeps neighbours");
        assert!(!distinct.is_empty());
        assert_eq!(close_pairs(&distinct), 0);
        // Each kept token is the largest membership of its window, by a direct look at the data.
        let p = |t: usize| { let a = angles[t]; let (e0, e1) = ((a.cos() / 0.3).exp(), (a.sin() / 0.3).exp()); e0 / (e0 + e1) };
        for e in &distinct {
            let lo = e.position.saturating_sub(w);
            let hi = (e.position + w).min(seq - 1);
            assert!((lo..=hi).all(|t| t == e.position || p(t) < p(e.position) + 1e-6), "position {}", e.position);
        }
        // And the window maxima with the largest memberships are all there.
        let maxima: Vec<usize> = (0..seq).filter(|&t| (t.saturating_sub(w)..=(t + w).min(seq - 1)).all(|u| u == t || p(u) < p(t))).collect();
        assert_eq!(distinct.len(), maxima.len().min(10));
        // Dropping overlaps from a merged list keeps the best of each neighbourhood.
        let dropped = drop_overlapping(all.clone(), w);
        assert_eq!(close_pairs(&dropped), 0);
        assert_eq!(dropped[0], all[0]);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut h = ExemplarHeaps::new(1, 0);
        h.offer(0, ex(1.0, 0, 0, 0));
        assert!(h.into_sorted()[0].is_empty());
    }
}
