//! What one streaming pass accumulates (docs/algorithm.md "Iterations"): a single mergeable value. Threads
//! merge their partials with `merge`; later, devices and ranks will call the same function.

/// A real token with a low best-cosine to the current centers: where an empty cluster's center
/// moves (docs/algorithm.md "Empty clusters"). The lowest first; ties go to the earliest (chunk, token).
#[derive(Debug, Clone, PartialEq)]
pub struct Farthest {
    pub best_cos: f32,
    pub chunk: usize,
    /// Flattened token index within its chunk file.
    pub token: usize,
    /// The unit-length token vector.
    pub vector: Vec<f32>,
}

impl Farthest {
    pub fn precedes(&self, other: &Farthest) -> bool {
        (self.best_cos, self.chunk, self.token) < (other.best_cos, other.chunk, other.token)
    }
}

/// How many reseed candidates a pass keeps: enough for that many clusters to go empty at once.
pub const RESEED_CANDIDATES: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct PassStats {
    pub k: usize,
    pub d: usize,
    /// `S = P^T X`, `[K, D]`, summed in float64 across blocks, chunks and devices.
    pub s: Vec<f64>,
    /// `m_k = sum_x p_k(x)`.
    pub mass: Vec<f64>,
    /// `sum_x sum_k p_k(x) cos(x, C_k)`; divided by `n_rows` it is the objective of docs/algorithm.md "History".
    pub objective_sum: f64,
    /// Real, non-zero tokens seen.
    pub n_rows: u64,
    /// Real tokens skipped because their vector is all zeros.
    pub skipped: u64,
    /// Tokens whose largest membership is cluster k.
    pub hard_count: Vec<u64>,
    /// Up to `RESEED_CANDIDATES` (at most K) tokens with the lowest best-cosine, lowest first.
    pub farthest: Vec<Farthest>,
}

impl PassStats {
    pub fn new(k: usize, d: usize) -> Self {
        PassStats {
            k,
            d,
            s: vec![0.0; k * d],
            mass: vec![0.0; k],
            objective_sum: 0.0,
            n_rows: 0,
            skipped: 0,
            hard_count: vec![0; k],
            farthest: Vec::new(),
        }
    }

    /// Statistics of runs that leave `S` out (`Want::sums` false): `s` stays empty.
    pub fn without_sums(k: usize, d: usize) -> Self {
        PassStats { d, s: Vec::new(), ..PassStats::new(k, 0) }
    }

    /// `new` when the pass sums `S`, else `without_sums`.
    pub fn sized(k: usize, d: usize, sums: bool) -> Self {
        if sums { PassStats::new(k, d) } else { PassStats::without_sums(k, d) }
    }

    /// Adds `other` into `self`. Associative; callers merge in a fixed order for bitwise repeatability.
    /// An empty `other.s` (a backend that keeps `S` to itself during a pass) adds nothing to `S`.
    pub fn merge(&mut self, other: PassStats) {
        assert_eq!((self.k, self.d), (other.k, other.d), "merging statistics of different shapes");
        assert!(other.s.is_empty() || other.s.len() == self.s.len(), "merging S of different sizes");
        // S is the reduce of several devices (512 MiB at K = 16384, D = 4096): added on every core.
        use rayon::prelude::*;
        self.s.par_chunks_mut(1 << 16).zip(other.s.par_chunks(1 << 16)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        self.mass.iter_mut().zip(&other.mass).for_each(|(a, b)| *a += b);
        self.hard_count.iter_mut().zip(&other.hard_count).for_each(|(a, b)| *a += b);
        self.objective_sum += other.objective_sum;
        self.n_rows += other.n_rows;
        self.skipped += other.skipped;
        self.farthest.extend(other.farthest);
        self.farthest.sort_by(|a, b| if a.precedes(b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
        // As many as one run keeps: a pass merged from parts (chunks, devices, ranks) holds what one run over all of them would.
        self.farthest.truncate(RESEED_CANDIDATES.min(self.k));
    }

    /// `mean_x sum_k p_k cos(x, C_k)` (docs/algorithm.md "History"), 0 when no token was seen.
    pub fn objective(&self) -> f64 {
        if self.n_rows == 0 { 0.0 } else { self.objective_sum / self.n_rows as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_with(best_cos: f32, chunk: usize, token: usize, mass: f64) -> PassStats {
        // K = 4, so that up to four reseed candidates are kept.
        let mut s = PassStats::new(4, 1);
        s.mass[0] = mass;
        s.s[0] = mass;
        s.n_rows = 1;
        s.hard_count[0] = 1;
        s.farthest = vec![Farthest { best_cos, chunk, token, vector: vec![1.0] }];
        s
    }

    #[test]
    fn merge_sums_and_keeps_the_farthest_earliest_token() {
        let mut a = stats_with(0.5, 1, 3, 1.0);
        a.merge(stats_with(0.2, 2, 0, 2.0));
        a.merge(stats_with(0.2, 0, 9, 4.0));
        a.merge(stats_with(0.2, 0, 10, 8.0));
        assert_eq!(a.mass, vec![15.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.s, vec![15.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.n_rows, 4);
        assert_eq!(a.hard_count, vec![4, 0, 0, 0]);
        let order: Vec<_> = a.farthest.iter().map(|f| (f.best_cos, f.chunk, f.token)).collect();
        assert_eq!(order, vec![(0.2, 0, 9), (0.2, 0, 10), (0.2, 2, 0), (0.5, 1, 3)]);
        // No more candidates than clusters, as one run keeps: a fifth is dropped.
        a.merge(stats_with(0.1, 3, 0, 1.0));
        assert_eq!(a.farthest.iter().map(|f| f.chunk).collect::<Vec<_>>(), vec![3, 0, 0, 2]);
    }
}
