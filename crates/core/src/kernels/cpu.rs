//! The CPU backend: rows are normalized block by block, similarities and `P^T X` go through a
//! real GEMM crate, and the softmax / threshold / renormalize step is one fused pass per row.
//! Work is split into one contiguous range of rows per rayon thread; partials are merged in range
//! order, so the same input and thread count give bit-identical results.

use super::{check_shapes, prepare_rows, Backend, Centers, Element, MembershipParams, PassOutput, SparseRows, Tokens, Want};
use crate::error::Result;
use crate::chunk::ActivationsRef;
use crate::pass::{Farthest, PassStats, RESEED_CANDIDATES};
use rayon::prelude::*;

/// Rows per block: the block of `N x K` similarities that exists at any time, per thread.
/// 512 measured best here (benches/RESULTS.md): smaller blocks re-pack the centers for the GEMM
/// too often and give the `P^T X` GEMM too short an inner dimension.
pub const BLOCK_ROWS: usize = 512;

/// `S += P^T X` is summed over the nonzero memberships only when fewer than one in this many
/// are nonzero (the usual case with `minMembership > 0`); denser blocks go through the GEMM.
const SPARSE_FRACTION: usize = 8;

/// Which GEMM crate multiplies the matrices. Both are kept so the benchmark can compare them;
/// `Default` is the one that measured faster here (benches/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmCrate {
    /// `gemm` (candle's).
    #[default]
    Gemm,
    /// `matrixmultiply` (ndarray's).
    MatrixMultiply,
}

#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    pub gemm: GemmCrate,
    /// Rows per block (see `BLOCK_ROWS`).
    pub block_rows: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend { gemm: GemmCrate::default(), block_rows: BLOCK_ROWS }
    }
}

impl CpuBackend {
    pub fn with_gemm(gemm: GemmCrate) -> Self {
        CpuBackend { gemm, ..Self::default() }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn run(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        check_shapes(centers, tokens)?;
        let rows = prepare_rows(tokens)?;
        let n = rows.len();
        let k = centers.k;
        let block_rows = self.block_rows.max(1);
        let parts = rayon::current_num_threads().min(n.div_ceil(block_rows)).max(1);
        let ranges: Vec<_> = (0..parts).map(|i| i * n / parts..(i + 1) * n / parts).collect();

        let mut dense = want.dense.then(|| vec![0f32; n * k]);
        let mut dense_parts: Vec<Option<&mut [f32]>> = Vec::with_capacity(parts);
        match dense.as_mut() {
            Some(all) => {
                let mut rest = all.as_mut_slice();
                for r in &ranges {
                    let (head, tail) = rest.split_at_mut(r.len() * k);
                    dense_parts.push(Some(head));
                    rest = tail;
                }
            }
            None => dense_parts.resize_with(parts, || None),
        }

        let job = Job { centers, params, want, gemm: self.gemm, block_rows, chunk_index: tokens.chunk_index, first_token: tokens.first_row * tokens.seq_len };
        let partials: Vec<Partial> = ranges
            .into_par_iter()
            .zip(dense_parts)
            .map(|(range, dense_out)| {
                let (tok, inv) = (&rows.token[range.clone()], &rows.inv_norm[range]);
                match tokens.activations {
                    ActivationsRef::BF16(a) => job.run_range(a, tok, inv, dense_out),
                    ActivationsRef::F16(a) => job.run_range(a, tok, inv, dense_out),
                    ActivationsRef::F32(a) => job.run_range(a, tok, inv, dense_out),
                    ActivationsRef::F64(a) => job.run_range(a, tok, inv, dense_out),
                }
            })
            .collect();

        let mut sparse = want.sparse.then(|| SparseRows { offset: vec![0], ..Default::default() });
        // The first range's statistics accumulate the others' (no extra K x D buffer).
        let mut stats: Option<PassStats> = None;
        for p in partials {
            if let (Some(all), Some(part)) = (sparse.as_mut(), p.sparse) {
                let base = all.cluster.len();
                all.offset.extend(part.offset[1..].iter().map(|o| o + base));
                all.cluster.extend(part.cluster);
                all.value.extend(part.value);
            }
            match (stats.as_mut(), p.stats) {
                (Some(all), Some(part)) => all.merge(part),
                (None, part) => stats = part,
                (Some(_), None) => {}
            }
        }
        if let Some(s) = stats.as_mut() {
            s.skipped = rows.skipped;
        }
        Ok(PassOutput { rows, dense, sparse, stats })
    }

    fn cosines(&self, rows: &[f32], others: &[f32], d: usize) -> Result<Vec<f32>> {
        Ok(cosines_on_host(self.gemm, rows, others, d))
    }

    /// Each thread keeps a float32 `K x D` partial of `S` plus its blocks, and a pass merges them
    /// in float64.
    fn host_bytes_for_pass(&self, k: usize, d: usize) -> f64 {
        let (k, d) = (k as f64, d as f64);
        let threads = rayon::current_num_threads() as f64;
        k * d * (4.0 * threads + 8.0 * (threads + 3.0)) + threads * self.block_rows as f64 * (k + d) * 4.0
    }
}

/// Rows per GEMM call in `cosines_on_host` (the unit of its parallel work).
const COSINE_BLOCK: usize = 1024;

/// `Backend::cosines` on the host: one GEMM per block of rows, blocks in parallel.
pub(crate) fn cosines_on_host(gemm: GemmCrate, rows: &[f32], others: &[f32], d: usize) -> Vec<f32> {
    let (n, t) = (rows.len() / d.max(1), others.len() / d.max(1));
    let mut out = vec![0f32; n * t];
    if t == 0 {
        return out;
    }
    out.par_chunks_mut(COSINE_BLOCK * t).zip(rows.par_chunks(COSINE_BLOCK * d)).for_each(|(out, rows)| {
        gemm.multiply(rows.len() / d, d, t, rows, (d, 1), others, (1, d), out, t, false);
    });
    out
}

struct Partial {
    sparse: Option<SparseRows>,
    stats: Option<PassStats>,
}

struct Job<'a> {
    centers: &'a Centers,
    params: MembershipParams,
    want: Want,
    gemm: GemmCrate,
    block_rows: usize,
    chunk_index: usize,
    /// Flattened index, in its file, of the block's first token (reseed ties go by file order).
    first_token: usize,
}

impl Job<'_> {
    /// Processes one contiguous range of rows, block by block, on the calling thread.
    fn run_range<T: Element>(&self, src: &[T], tokens: &[u32], inv_norm: &[f64], mut dense_out: Option<&mut [f32]>) -> Partial {
        let (k, d) = (self.centers.k, self.centers.d);
        let n = tokens.len();
        let inv_t = (1.0 / self.params.temperature) as f32;
        let min_m = self.params.min_membership as f32;
        let exact = self.params.temperature < EXACT_BELOW_TEMPERATURE;
        let block_rows = self.block_rows;
        let mut x = vec![0f32; block_rows.min(n) * d];
        let mut p = vec![0f32; block_rows.min(n) * k];
        let mut e = vec![0f32; k];
        // The float64 path's row (widened once for all its recomputed cosines) and buffers.
        let (mut exact_row, mut exact_scratch) = (vec![0f64; if exact { d } else { 0 }], ExactScratch::default());
        let mut sparse = self.want.sparse.then(|| SparseRows { offset: vec![0], ..Default::default() });
        let sums = self.want.stats && self.want.sums;
        let mut s_block = if sums { vec![0f32; k * d] } else { Vec::new() };
        // Everything but `S`, which is `s_block` widened at the end.
        let mut stats = self.want.stats.then(|| PassStats::without_sums(k, d));
        // (best cosine, row) of the rows with the lowest best cosine, lowest first.
        let mut farthest: Vec<(f32, usize)> = Vec::new();
        let keep_farthest = RESEED_CANDIDATES.min(k);
        // The block's nonzero memberships (cluster, value), row j at nz[nz_offset[j]..nz_offset[j + 1]].
        let mut nz: Vec<(u32, f32)> = Vec::new();
        let mut nz_offset: Vec<usize> = Vec::with_capacity(block_rows + 1);
        // The block's nonzeros grouped by cluster, (row, value): cluster c's at
        // by_cluster[cluster_start[c]..cluster_start[c + 1]].
        let mut by_cluster: Vec<(u32, f32)> = Vec::new();
        let (mut cluster_start, mut next): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());

        for start in (0..n).step_by(block_rows) {
            let b = block_rows.min(n - start);
            for j in 0..b {
                let t = tokens[start + j] as usize;
                T::scale_into(&src[t * d..(t + 1) * d], inv_norm[start + j], &mut x[j * d..(j + 1) * d]);
            }
            // p[b x K] = x[b x D] . C^T
            self.gemm.multiply(b, d, k, &x, (d, 1), &self.centers.data, (1, d), &mut p, k, false);
            nz.clear();
            nz_offset.clear();
            nz_offset.push(0);
            for j in 0..b {
                let row_p = &mut p[j * k..(j + 1) * k];
                let row = if exact {
                    let t = tokens[start + j] as usize;
                    T::widen_f64(&src[t * d..(t + 1) * d], &mut exact_row);
                    let a = &exact_row;
                    let cosine = |c: usize| dot_f64(a, self.centers.row(c)) * inv_norm[start + j];
                    softmax_exact(row_p, cosine, self.params, &mut exact_scratch)
                } else {
                    fused_softmax(row_p, &mut e, inv_t, min_m)
                };
                push_nonzeros(row_p, &mut nz);
                nz_offset.push(nz.len());
                if let Some(st) = stats.as_mut() {
                    st.objective_sum += f64::from(row.objective);
                    st.hard_count[row.argmax] += 1;
                    if farthest.len() < keep_farthest || farthest.last().is_some_and(|&(worst, _)| row.best_cos < worst) {
                        let at = farthest.partition_point(|&(c, _)| c <= row.best_cos);
                        farthest.insert(at, (row.best_cos, start + j));
                        farthest.truncate(keep_farthest);
                    }
                }
            }
            if let Some(sp) = sparse.as_mut() {
                sp.cluster.extend(nz.iter().map(|&(c, _)| c));
                sp.value.extend(nz.iter().map(|&(_, v)| v));
                let base = sp.offset.last().copied().unwrap_or(0);
                sp.offset.extend(nz_offset[1..].iter().map(|o| base + o));
            }
            if let Some(out) = dense_out.as_deref_mut() {
                out[start * k..(start + b) * k].copy_from_slice(&p[..b * k]);
            }
            if let Some(st) = stats.as_mut() {
                for &(c, v) in &nz {
                    st.mass[c as usize] += f64::from(v);
                }
                if !sums {
                    // `m` and the counts only (output pass, analysis).
                } else if nz.len() * SPARSE_FRACTION < b * k {
                    // Thresholding left few memberships: S_k += p_k x over the nonzeros only,
                    // nnz * D work instead of the GEMM's K * D per row.
                    // Cluster-major order keeps each row of S in L1 while the block's rows stream by.
                    // A counting sort by cluster; rows come in order, so each cluster's
                    // entries stay in row order.
                    cluster_start.clear();
                    cluster_start.resize(k + 1, 0);
                    nz.iter().for_each(|&(c, _)| cluster_start[c as usize + 1] += 1);
                    (0..k).for_each(|c| cluster_start[c + 1] += cluster_start[c]);
                    next.clear();
                    next.extend_from_slice(&cluster_start[..k]);
                    by_cluster.resize(nz.len(), (0, 0.0));
                    for j in 0..b {
                        for &(c, v) in &nz[nz_offset[j]..nz_offset[j + 1]] {
                            by_cluster[next[c as usize]] = (j as u32, v);
                            next[c as usize] += 1;
                        }
                    }
                    for c in (0..k).filter(|&c| cluster_start[c] < cluster_start[c + 1]) {
                        add_scaled_rows(&by_cluster[cluster_start[c]..cluster_start[c + 1]], &x[..b * d], &mut s_block[c * d..(c + 1) * d]);
                    }
                } else {
                    // S[K x D] += p^T[K x b] . x[b x D]
                    self.gemm.multiply(k, b, d, &p, (1, k), &x, (d, 1), &mut s_block, d, true);
                }
            }
        }

        if let Some(st) = stats.as_mut() {
            st.n_rows = n as u64;
            st.s = s_block.iter().map(|&v| f64::from(v)).collect(); // empty without `sums`
            st.farthest = farthest
                .into_iter()
                .map(|(best_cos, r)| {
                    let t = tokens[r] as usize;
                    let mut vector = vec![0f32; d];
                    T::scale_into(&src[t * d..(t + 1) * d], inv_norm[r], &mut vector);
                    Farthest { best_cos, chunk: self.chunk_index, token: self.first_token + t, vector }
                })
                .collect();
        }
        Partial { sparse, stats }
    }
}

impl GemmCrate {
    /// `c[m x n] (+)= a[m x k] . b[k x n]`; `a` and `b` are given with (row, column) strides,
    /// `c` is row-major with row stride `ldc`. Single-threaded: rayon already splits the rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn multiply(self, m: usize, k: usize, n: usize, a: &[f32], a_strides: (usize, usize), b: &[f32], b_strides: (usize, usize), c: &mut [f32], ldc: usize, accumulate: bool) {
        let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs;
        if m == 0 || n == 0 {
            return;
        }
        assert!(k == 0 || (last(m, k, a_strides) < a.len() && last(k, n, b_strides) < b.len()));
        assert!(last(m, n, (ldc, 1)) < c.len());
        let (ars, acs) = (a_strides.0 as isize, a_strides.1 as isize);
        let (brs, bcs) = (b_strides.0 as isize, b_strides.1 as isize);
        // SAFETY: the asserts above keep every index the crates touch inside the slices.
        unsafe {
            match self {
                GemmCrate::Gemm => gemm::gemm(
                    m, n, k,
                    c.as_mut_ptr(), 1, ldc as isize, accumulate,
                    a.as_ptr(), acs, ars,
                    b.as_ptr(), bcs, brs,
                    1.0, 1.0, false, false, false,
                    gemm::Parallelism::None,
                ),
                GemmCrate::MatrixMultiply => matrixmultiply::sgemm(
                    m, k, n,
                    1.0, a.as_ptr(), ars, acs,
                    b.as_ptr(), brs, bcs,
                    if accumulate { 1.0 } else { 0.0 }, c.as_mut_ptr(), ldc as isize, 1,
                ),
            }
        }
    }
}

/// What the fused step learns about one row besides its memberships.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSummary {
    /// Index of the largest membership (the first, on ties).
    pub argmax: usize,
    /// The largest cosine, `cos(x, C_argmax)`.
    pub best_cos: f32,
    /// `sum_k p_k cos_k`.
    pub objective: f32,
}

/// The membership formula (docs/algorithm.md "Memberships") on one row, in place: `row` holds cosines on entry and memberships on return.
/// `scratch` is a `K`-long buffer. Uses an AVX-512 or AVX2+FMA version when the CPU has one (the
/// package is built for baseline x86-64 so that one binary runs everywhere, hence the runtime
/// check).
pub(crate) fn fused_softmax(row: &mut [f32], scratch: &mut [f32], inv_t: f32, min_m: f32) -> RowSummary {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features this version is compiled for.
            return unsafe { avx512::fused_softmax(row, scratch, inv_t, min_m) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2::fused_softmax(row, scratch, inv_t, min_m) };
        }
    }
    fused_softmax_scalar(row, scratch, inv_t, min_m)
}

/// Appends the nonzero entries of `row` as (index, value).
fn push_nonzeros(row: &[f32], out: &mut Vec<(u32, f32)>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { avx512::push_nonzeros(row, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2::push_nonzeros(row, out) };
        }
    }
    out.extend(row.iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(c, &v)| (c as u32, v)));
}

/// `y += v_1 x_(j_1) + v_2 x_(j_2) + ...` for the `(j, v)` of `entries`, `x` rows of `y.len()`
/// values: every element takes the entries in order, as one `y += v x_j` per entry would (an FMA
/// each where the SIMD versions have a full vector, a multiply and an add past it), but `y` is
/// loaded and stored once per group of vectors instead of once per entry.
fn add_scaled_rows(entries: &[(u32, f32)], x: &[f32], y: &mut [f32]) {
    let d = y.len();
    assert!(entries.iter().all(|&(j, _)| (j as usize + 1) * d <= x.len()), "a row past the block");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features; every row is inside `x` (asserted).
            return unsafe { avx512::add_scaled_rows(entries, x, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2::add_scaled_rows(entries, x, y, 0) };
        }
    }
    add_scaled_tail(entries, x, y, 0);
}

/// `add_scaled_rows` on the elements from `from` on, one multiply and add per entry.
fn add_scaled_tail(entries: &[(u32, f32)], x: &[f32], y: &mut [f32], from: usize) {
    let d = y.len();
    for &(j, v) in entries {
        let row = &x[j as usize * d..(j as usize + 1) * d];
        y[from..].iter_mut().zip(&row[from..]).for_each(|(y, &x)| *y += v * x);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! `add_scaled_rows`, `fused_softmax` and `push_nonzeros` sixteen lanes at a time; the last
    //! partial vector of a row goes through masked loads and stores.
    use super::{RowSummary, EXP_LN2_HI, EXP_LN2_LO, EXP_POLY};
    use std::arch::x86_64::*;

    /// The lanes of a row's vector at `i` that lie inside the row of `k` values.
    #[inline]
    fn lanes(i: usize, k: usize) -> __mmask16 {
        if k - i >= 16 { !0 } else { ((1u32 << (k - i)) - 1) as __mmask16 }
    }

    /// Sixteen lanes of `exp_nonpositive` (the AVX2 `exp8`'s steps).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let xc = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        let in_range = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-87.0));
        _mm512_maskz_mul_ps(in_range, y, _mm512_castsi512_ps(bits))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn push_nonzeros(row: &[f32], out: &mut Vec<(u32, f32)>) {
        let k = row.len();
        for i in (0..k).step_by(16) {
            // SAFETY: the mask keeps the load inside the row.
            let v = unsafe { _mm512_maskz_loadu_ps(lanes(i, k), row.as_ptr().add(i)) };
            let mut bits = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps()) as u32;
            while bits != 0 {
                let at = i + bits.trailing_zeros() as usize;
                out.push((at as u32, row[at]));
                bits &= bits - 1;
            }
        }
    }

    /// `super::fused_softmax_scalar`'s steps, sixteen lanes at a time: the max and its first
    /// index, `e` and its sum, the kept sum, then the memberships and the objective.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn fused_softmax(row: &mut [f32], e: &mut [f32], inv_t: f32, min_m: f32) -> RowSummary {
        let k = row.len();
        assert!(e.len() >= k);
        let (rp, ep) = (row.as_mut_ptr(), e.as_mut_ptr());
        // Whole vectors, then the tail's lanes (none when k is a multiple of 16).
        let full = k - k % 16;
        let steps = (0..full).step_by(16).map(|i| (i, !0)).chain((full < k).then(|| (full, lanes(full, k))));
        // SAFETY (all loads and stores below): masked to the lanes below `k <= e.len()`.
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for (i, m) in steps.clone() {
            vmax = _mm512_mask_max_ps(vmax, m, vmax, unsafe { _mm512_maskz_loadu_ps(m, rp.add(i)) });
        }
        let max = _mm512_reduce_max_ps(vmax);
        let vmaxb = _mm512_set1_ps(max);
        let argmax = steps
            .clone()
            .find_map(|(i, m)| {
                let hit = m & _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(unsafe { _mm512_maskz_loadu_ps(m, rp.add(i)) }, vmaxb);
                (hit != 0).then(|| i + hit.trailing_zeros() as usize)
            })
            .unwrap_or(0);

        let vinv = _mm512_set1_ps(inv_t);
        let mut vsum = _mm512_setzero_ps();
        for (i, m) in steps.clone() {
            let ez = exp16(_mm512_mul_ps(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(m, rp.add(i)) }, vmaxb), vinv));
            unsafe { _mm512_mask_storeu_ps(ep.add(i), m, ez) };
            vsum = _mm512_mask_add_ps(vsum, m, vsum, ez);
        }
        let threshold = min_m * _mm512_reduce_add_ps(vsum);
        let vthr = _mm512_set1_ps(threshold);
        let mut vkept = _mm512_setzero_ps();
        for (i, m) in steps.clone() {
            let ev = unsafe { _mm512_maskz_loadu_ps(m, ep.add(i)) };
            vkept = _mm512_mask_add_ps(vkept, m & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ev, vthr), vkept, ev);
        }
        let forced = e[argmax] < threshold;
        let kept = _mm512_reduce_add_ps(vkept) + if forced { e[argmax] } else { 0.0 };
        let inv_kept = 1.0 / kept;
        let vinv_kept = _mm512_set1_ps(inv_kept);
        let mut vobj = _mm512_setzero_ps();
        for (i, m) in steps {
            let ev = unsafe { _mm512_maskz_loadu_ps(m, ep.add(i)) };
            let p = _mm512_maskz_mul_ps(m & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(ev, vthr), ev, vinv_kept);
            vobj = _mm512_fmadd_ps(p, unsafe { _mm512_maskz_loadu_ps(m, rp.add(i)) }, vobj);
            unsafe { _mm512_mask_storeu_ps(rp.add(i), m, p) };
        }
        let mut objective = _mm512_reduce_add_ps(vobj);
        if forced {
            row[argmax] = e[argmax] * inv_kept;
            objective += row[argmax] * max;
        }
        RowSummary { argmax, best_cos: max, objective }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn add_scaled_rows(entries: &[(u32, f32)], x: &[f32], y: &mut [f32]) {
        let d = y.len();
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        // SAFETY (all loads and stores): i + width <= d, and every row j holds d values of `x`
        // (the caller asserted it).
        while i + 64 <= d {
            unsafe {
                let (mut a0, mut a1, mut a2, mut a3) = (_mm512_loadu_ps(yp.add(i)), _mm512_loadu_ps(yp.add(i + 16)), _mm512_loadu_ps(yp.add(i + 32)), _mm512_loadu_ps(yp.add(i + 48)));
                for &(j, v) in entries {
                    let (r, v) = (xp.add(j as usize * d + i), _mm512_set1_ps(v));
                    a0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(r), a0);
                    a1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(r.add(16)), a1);
                    a2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(r.add(32)), a2);
                    a3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(r.add(48)), a3);
                }
                _mm512_storeu_ps(yp.add(i), a0);
                _mm512_storeu_ps(yp.add(i + 16), a1);
                _mm512_storeu_ps(yp.add(i + 32), a2);
                _mm512_storeu_ps(yp.add(i + 48), a3);
            }
            i += 64;
        }
        while i + 16 <= d {
            unsafe {
                let mut a = _mm512_loadu_ps(yp.add(i));
                for &(j, v) in entries {
                    a = _mm512_fmadd_ps(_mm512_set1_ps(v), _mm512_loadu_ps(xp.add(j as usize * d + i)), a);
                }
                _mm512_storeu_ps(yp.add(i), a);
            }
            i += 16;
        }
        // Eight lanes past the last sixteen, then one at a time, as the AVX2 version does.
        unsafe { super::avx2::add_scaled_rows(entries, x, y, i) }
    }
}

/// The portable version of `fused_softmax`, and the reference for the SIMD one.
pub(crate) fn fused_softmax_scalar(row: &mut [f32], e: &mut [f32], inv_t: f32, min_m: f32) -> RowSummary {
    let k = row.len();
    let e = &mut e[..k];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let argmax = row.iter().position(|&v| v == max).unwrap_or(0);
    let mut sum = 0f32;
    for (ei, &c) in e.iter_mut().zip(row.iter()) {
        *ei = exp_nonpositive((c - max) * inv_t);
        sum += *ei;
    }
    // p_k < minMembership  <=>  e_k < minMembership * sum; the largest entry always stays.
    let threshold = min_m * sum;
    let forced = e[argmax] < threshold;
    let kept: f32 = e.iter().filter(|&&v| v >= threshold).sum::<f32>() + if forced { e[argmax] } else { 0.0 };
    let inv_kept = 1.0 / kept;
    let mut objective = 0f32;
    for (c, &ei) in row.iter_mut().zip(e.iter()) {
        let p = if ei >= threshold { ei * inv_kept } else { 0.0 };
        objective += p * *c;
        *c = p;
    }
    if forced {
        row[argmax] = e[argmax] * inv_kept;
        objective += row[argmax] * max;
    }
    RowSummary { argmax, best_cos: max, objective }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! `fused_softmax` with AVX2 + FMA intrinsics: the same steps as `fused_softmax_scalar`,
    //! eight lanes at a time (the compiler does not vectorize the reductions by itself).
    use super::{exp_nonpositive, RowSummary, EXP_LN2_HI, EXP_LN2_LO, EXP_POLY};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Eight lanes of `exp_nonpositive`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let xc = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        let in_range = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.0));
        _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(bits)), in_range)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn push_nonzeros(row: &[f32], out: &mut Vec<(u32, f32)>) {
        let full = row.len() - row.len() % 8;
        let zero = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= row.len().
            let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) };
            let mut bits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)) as u32;
            while bits != 0 {
                let at = i + bits.trailing_zeros() as usize;
                out.push((at as u32, row[at]));
                bits &= bits - 1;
            }
        }
        out.extend(row[full..].iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(c, &v)| ((full + c) as u32, v)));
    }

    /// `super::add_scaled_rows` on the elements from `from` on, eight lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_scaled_rows(entries: &[(u32, f32)], x: &[f32], y: &mut [f32], from: usize) {
        let d = y.len();
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = from;
        // SAFETY (all loads and stores): i + width <= d, and every row j holds d values of `x`
        // (the caller asserted it).
        while i + 32 <= d {
            unsafe {
                let (mut a0, mut a1, mut a2, mut a3) = (_mm256_loadu_ps(yp.add(i)), _mm256_loadu_ps(yp.add(i + 8)), _mm256_loadu_ps(yp.add(i + 16)), _mm256_loadu_ps(yp.add(i + 24)));
                for &(j, v) in entries {
                    let (r, v) = (xp.add(j as usize * d + i), _mm256_set1_ps(v));
                    a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r), a0);
                    a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r.add(8)), a1);
                    a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r.add(16)), a2);
                    a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(r.add(24)), a3);
                }
                _mm256_storeu_ps(yp.add(i), a0);
                _mm256_storeu_ps(yp.add(i + 8), a1);
                _mm256_storeu_ps(yp.add(i + 16), a2);
                _mm256_storeu_ps(yp.add(i + 24), a3);
            }
            i += 32;
        }
        while i + 8 <= d {
            unsafe {
                let mut a = _mm256_loadu_ps(yp.add(i));
                for &(j, v) in entries {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(v), _mm256_loadu_ps(xp.add(j as usize * d + i)), a);
                }
                _mm256_storeu_ps(yp.add(i), a);
            }
            i += 8;
        }
        super::add_scaled_tail(entries, x, y, i);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fused_softmax(row: &mut [f32], e: &mut [f32], inv_t: f32, min_m: f32) -> RowSummary {
        let k = row.len();
        assert!(e.len() >= k);
        let full = k - k % 8;
        let (rp, ep) = (row.as_mut_ptr(), e.as_mut_ptr());
        // SAFETY (all loads and stores): indices stay below `full <= k <= e.len()`.
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(rp.add(i)) });
        }
        let max = row[full..].iter().fold(hmax(vmax), |m, &v| m.max(v));
        // The first index of the max, eight lanes at a time (a scalar scan was a fifth of the step).
        let vmaxb = _mm256_set1_ps(max);
        let argmax = (0..full)
            .step_by(8)
            .find_map(|i| {
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(unsafe { _mm256_loadu_ps(rp.add(i)) }, vmaxb)) as u32;
                (hit != 0).then(|| i + hit.trailing_zeros() as usize)
            })
            .or_else(|| row[full..].iter().position(|&v| v == max).map(|j| full + j))
            .unwrap_or(0);

        let vinv = _mm256_set1_ps(inv_t);
        let mut vsum = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let z = _mm256_mul_ps(_mm256_sub_ps(unsafe { _mm256_loadu_ps(rp.add(i)) }, vmaxb), vinv);
            let ez = exp8(z);
            unsafe { _mm256_storeu_ps(ep.add(i), ez) };
            vsum = _mm256_add_ps(vsum, ez);
        }
        let mut sum = hsum(vsum);
        for i in full..k {
            e[i] = exp_nonpositive((row[i] - max) * inv_t);
            sum += e[i];
        }

        let threshold = min_m * sum;
        let vthr = _mm256_set1_ps(threshold);
        let mut vkept = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let ev = unsafe { _mm256_loadu_ps(ep.add(i)) };
            vkept = _mm256_add_ps(vkept, _mm256_and_ps(ev, _mm256_cmp_ps::<_CMP_GE_OQ>(ev, vthr)));
        }
        let forced = e[argmax] < threshold;
        let kept = hsum(vkept) + e[full..k].iter().filter(|&&v| v >= threshold).sum::<f32>() + if forced { e[argmax] } else { 0.0 };
        let inv_kept = 1.0 / kept;

        let vinv_kept = _mm256_set1_ps(inv_kept);
        let mut vobj = _mm256_setzero_ps();
        for i in (0..full).step_by(8) {
            let ev = unsafe { _mm256_loadu_ps(ep.add(i)) };
            let p = _mm256_and_ps(_mm256_mul_ps(ev, vinv_kept), _mm256_cmp_ps::<_CMP_GE_OQ>(ev, vthr));
            vobj = _mm256_fmadd_ps(p, unsafe { _mm256_loadu_ps(rp.add(i)) }, vobj);
            unsafe { _mm256_storeu_ps(rp.add(i), p) };
        }
        let mut objective = hsum(vobj);
        for i in full..k {
            let p = if e[i] >= threshold { e[i] * inv_kept } else { 0.0 };
            objective += p * row[i];
            row[i] = p;
        }
        if forced {
            row[argmax] = e[argmax] * inv_kept;
            objective += row[argmax] * max;
        }
        RowSummary { argmax, best_cos: max, objective }
    }
}

/// Below this temperature float32 similarities are not precise enough: an error of `eps` in a
/// cosine moves a membership by up to `eps / (4 T)`, and float32 GEMM errors reach ~4e-6 at
/// D = 4096. Rows are then finished in float64 by `softmax_exact`.
pub const EXACT_BELOW_TEMPERATURE: f64 = 0.02;

/// Cosines whose exponent `(cos - max) / T` is below this are recomputed in float64; the rest
/// have memberships under e^-14 of the largest, where float32 cosines are more than enough.
pub(crate) const EXACT_WINDOW: f64 = 14.0;

/// Buffers of `softmax_exact`, reused from row to row: the (index, cosine, exponential) of the
/// cosines near the maximum, and every cosine and exponential for the rare rows that need them.
#[derive(Default)]
struct ExactScratch {
    near: Vec<(usize, f64, f64)>,
    cos: Vec<f64>,
    e: Vec<f64>,
}

/// `a . c` in float64: products of float64 and widened float32 values, summed in eight lanes
/// (then pairwise), the same on every CPU (no fused multiply-adds: Rust does not contract).
fn dot_f64(a: &[f64], c: &[f32]) -> f64 {
    #[inline(always)]
    fn lanes(a: &[f64], c: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let (mut ac, mut cc) = (a.chunks_exact(8), c.chunks_exact(8));
        for (x, y) in (&mut ac).zip(&mut cc) {
            for l in 0..8 {
                acc[l] += x[l] * f64::from(y[l]);
            }
        }
        let tail: f64 = ac.remainder().iter().zip(cc.remainder()).map(|(&x, &y)| x * f64::from(y)).sum();
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn wide(a: &[f64], c: &[f32]) -> f64 {
            lanes(a, c)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (the same operations, in wider registers).
            return unsafe { wide(a, c) };
        }
    }
    lanes(a, c)
}

/// The smallest float32 at or above `window`: for a float32 `x`, `f64::from(x) < window` exactly
/// when `x < above(window)`, a test in float32 that vectorizes.
fn f32_at_or_above(window: f64) -> f32 {
    let w = window as f32;
    if f64::from(w) >= window { w } else { f32::from_bits(w.to_bits() + 1) }
}

/// `sum exp((v - max) * inv_t)` over the entries `v` of `row` with `max - v >= window` (float32
/// exponentials, summed in sixteen lanes).
fn far_exp_sum(row: &[f32], max: f32, inv_t: f32, window: f64) -> f64 {
    #[inline(always)]
    fn lanes(row: &[f32], max: f32, inv_t: f32, window: f64) -> f64 {
        let window = f32_at_or_above(window);
        let term = |v: f32| if max - v < window { 0.0 } else { exp_nonpositive((v - max) * inv_t) };
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for l in 0..16 {
                acc[l] += term(c[l]);
            }
        }
        acc.iter().map(|&v| f64::from(v)).sum::<f64>() + chunks.remainder().iter().map(|&v| f64::from(term(v))).sum::<f64>()
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn wide(row: &[f32], max: f32, inv_t: f32, window: f64) -> f64 {
            lanes(row, max, inv_t, window)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (the same operations, in wider registers).
            return unsafe { wide(row, max, inv_t, window) };
        }
    }
    lanes(row, max, inv_t, window)
}

/// The membership formula (docs/algorithm.md "Memberships") on one row in float64, for tiny
/// temperatures. `row` holds float32 cosines on entry (memberships on return); `cosine(k)`
/// recomputes one exactly. Only the cosines near the maximum, the ones that decide the result,
/// are recomputed, and only their exponentials are taken in float64. The others are under
/// `e^-14` of the largest: they count in the sum through float32 exponentials summed in float32
/// (the sum, whose largest term is 1, moves by less than `K * 1e-11`) and can not pass a
/// threshold above `e^-13`, so their memberships are 0; a smaller threshold (a tiny
/// `minMembership`) takes every entry one by one (`softmax_exact_every`).
fn softmax_exact(row: &mut [f32], cosine: impl Fn(usize) -> f64, params: MembershipParams, scratch: &mut ExactScratch) -> RowSummary {
    let inv_t = 1.0 / params.temperature;
    let max32 = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let window = EXACT_WINDOW * params.temperature + 1e-5; // plus float32's own error
    let near = &mut scratch.near;
    near.clear();
    let window32 = f32_at_or_above(window);
    near.extend(row.iter().enumerate().filter(|&(_, &v)| max32 - v < window32).map(|(c, _)| (c, cosine(c), 0.0)));
    // The first index of the largest (`near` is in index order).
    let (argmax, max) = near.iter().fold((usize::MAX, f64::NEG_INFINITY), |b, &(c, v, _)| if v > b.1 { (c, v) } else { b });
    if argmax == usize::MAX {
        // No finite cosine (inputs are checked, so not expected): the entry-by-entry path's answer.
        return softmax_exact_every(row, near, params, &mut scratch.cos, &mut scratch.e);
    }
    near.iter_mut().for_each(|(_, c, e)| *e = ((*c - max) * inv_t).exp());
    let far = far_exp_sum(row, max32, inv_t as f32, window) * ((f64::from(max32) - max) * inv_t).exp();
    let sum = near.iter().map(|&(_, _, e)| e).sum::<f64>() + far;
    let threshold = params.min_membership * sum;
    if threshold <= (-13f64).exp() {
        return softmax_exact_every(row, near, params, &mut scratch.cos, &mut scratch.e);
    }
    let keep = |c: usize, e: f64| e >= threshold || c == argmax;
    let kept: f64 = near.iter().filter(|&&(c, _, e)| keep(c, e)).map(|&(_, _, e)| e).sum();
    row.fill(0.0);
    let mut objective = 0.0;
    for &(c, cos, e) in near.iter().filter(|&&(c, _, e)| keep(c, e)) {
        let p = e / kept;
        objective += p * cos;
        row[c] = p as f32;
    }
    RowSummary { argmax, best_cos: max as f32, objective: objective as f32 }
}

/// `softmax_exact` entry by entry, for thresholds that far entries may pass: the float32 cosines
/// of `row` with the recomputed ones of `near` in their places, float64 exponentials for those,
/// float32 ones for the rest.
fn softmax_exact_every(row: &mut [f32], near: &[(usize, f64, f64)], params: MembershipParams, cos: &mut Vec<f64>, e: &mut Vec<f64>) -> RowSummary {
    let inv_t = 1.0 / params.temperature;
    cos.clear();
    cos.extend(row.iter().map(|&v| f64::from(v)));
    near.iter().for_each(|&(c, v, _)| cos[c] = v);
    let max = cos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let argmax = cos.iter().position(|&v| v == max).unwrap_or(0);
    e.clear();
    e.extend(cos.iter().map(|&c| f64::from(exp_nonpositive(((c - max) * inv_t) as f32))));
    near.iter().for_each(|&(c, v, _)| e[c] = ((v - max) * inv_t).exp());
    let sum: f64 = e.iter().sum();
    let threshold = params.min_membership * sum;
    let keep = |c: usize| e[c] >= threshold || c == argmax;
    let kept: f64 = (0..e.len()).filter(|&c| keep(c)).map(|c| e[c]).sum();
    let mut objective = 0.0;
    for (c, out) in row.iter_mut().enumerate() {
        let p = if keep(c) { e[c] / kept } else { 0.0 };
        objective += p * cos[c];
        *out = p as f32;
    }
    RowSummary { argmax, best_cos: max as f32, objective: objective as f32 }
}

/// `ln 2` split in two for `exp_nonpositive`'s range reduction (and its SIMD versions').
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial's coefficients, highest degree first (Cephes' digits as published).
#[allow(clippy::excessive_precision)]
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

/// `exp(x)` for `x <= 0` in float32, branch-free so that it vectorizes: Cephes' range reduction
/// and degree-6 polynomial (relative error below 2e-7). Results below float32's normal range are 0.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let xc = x.max(-87.0);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * EXP_LN2_HI - n * EXP_LN2_LO;
    let poly = EXP_POLY[1..].iter().fold(EXP_POLY[0], |poly, &c| poly * r + c);
    let y = poly * r * r + r + 1.0;
    // 2^n from the integer in `shifted`'s low bits: integer steps that vectorize, where `n as
    // i32` (saturating) went value by value.
    let scale = f32::from_bits((shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    if x < -87.0 { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_over_its_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let got = f64::from(exp_nonpositive(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn fused_softmax_keeps_the_maximum_when_nothing_passes_the_threshold() {
        // 4 equal-ish entries of ~0.25 each, threshold 0.9: only the largest survives, as 1.0.
        let mut row = vec![0.10, 0.11, 0.10, 0.09];
        let mut scratch = vec![0.0; 4];
        let s = fused_softmax(&mut row, &mut scratch, 1.0, 0.9);
        assert_eq!(s.argmax, 1);
        assert_eq!(row, vec![0.0, 1.0, 0.0, 0.0]);
        assert!((s.objective - 0.11).abs() < 1e-7);
    }

    /// The SIMD `fused_softmax` versions this CPU can run (AVX2+FMA, AVX-512F+FMA), named, called
    /// directly (not through the dispatcher, which would pick one and silently fall back to the
    /// scalar version).
    #[allow(clippy::type_complexity)]
    fn simd_softmaxes() -> Vec<(&'static str, fn(&mut [f32], &mut [f32], f32, f32) -> RowSummary)> {
        #[allow(unused_mut)]
        let mut found: Vec<(&'static str, fn(&mut [f32], &mut [f32], f32, f32) -> RowSummary)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                found.push(("AVX2", |row, e, inv_t, min_m| unsafe { avx2::fused_softmax(row, e, inv_t, min_m) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                found.push(("AVX-512", |row, e, inv_t, min_m| unsafe { avx512::fused_softmax(row, e, inv_t, min_m) }));
            }
        }
        found
    }

    /// Every `push_nonzeros` version this CPU can run, called directly.
    #[allow(clippy::type_complexity)]
    fn nonzero_pushers() -> Vec<(&'static str, fn(&[f32], &mut Vec<(u32, f32)>))> {
        #[allow(unused_mut)]
        let mut found: Vec<(&'static str, fn(&[f32], &mut Vec<(u32, f32)>))> = vec![("dispatched", push_nonzeros)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports the feature the function is compiled for.
                found.push(("AVX2", |row, out| unsafe { avx2::push_nonzeros(row, out) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: as above.
                found.push(("AVX-512", |row, out| unsafe { avx512::push_nonzeros(row, out) }));
            }
        }
        found
    }

    #[test]
    fn scaled_rows_are_added_as_one_multiply_add_per_entry_in_order_bit_for_bit() {
        let mut state = 5u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // Lengths around every vector width the versions step by.
        for d in [1, 7, 8, 15, 16, 24, 63, 64, 65, 100, 768] {
            let x: Vec<f32> = (0..9 * d).map(|_| next()).collect();
            let y0: Vec<f32> = (0..d).map(|_| next()).collect();
            let entries: Vec<(u32, f32)> = [(0, 0.3), (2, -1.7), (3, 0.01), (8, 2.5), (2, 0.6)].iter().map(|&(j, v)| (j, v * next())).collect();
            // One `y += v x_j` per entry: fused where `fused` elements are, a multiply and an add past them.
            let reference = |fused: usize| {
                let mut y = y0.clone();
                for &(j, v) in &entries {
                    for (i, y) in y.iter_mut().enumerate() {
                        let x = x[j as usize * d + i];
                        *y = if i < fused { v.mul_add(x, *y) } else { *y + v * x };
                    }
                }
                y
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut y = y0.clone();
            add_scaled_tail(&entries, &x, &mut y, 0);
            assert_eq!(bits(&y), bits(&reference(0)), "portable, d {d}");
            #[cfg(target_arch = "x86_64")]
            {
                let fused = d - d % 8;
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    let mut y = y0.clone();
                    // SAFETY: the CPU has the features; every row is inside `x`.
                    unsafe { avx2::add_scaled_rows(&entries, &x, &mut y, 0) };
                    assert_eq!(bits(&y), bits(&reference(fused)), "AVX2, d {d}");
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                    let mut y = y0.clone();
                    // SAFETY: as above.
                    unsafe { avx512::add_scaled_rows(&entries, &x, &mut y) };
                    assert_eq!(bits(&y), bits(&reference(fused)), "AVX-512, d {d}");
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_softmax_agree() {
        let simds = simd_softmaxes();
        if simds.len() < 2 {
            // Straight to stderr: the harness captures `eprintln!` and shows it only on failure.
            use std::io::Write;
            let found: Vec<_> = simds.iter().map(|s| s.0).collect();
            let _ = writeln!(std::io::stderr(), "SKIPPED in part simd_and_scalar_softmax_agree: this CPU runs only {found:?} of the AVX2 and AVX-512 softmaxes, the others were not compared");
        }
        let mut state = 17u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for k in [1, 3, 8, 13, 16, 17, 64, 1000] {
            for (inv_t, min_m) in [(1.0, 0.0), (4.0, 0.01), (100.0, 0.3), (1e-6, 0.99)] {
                let row: Vec<f32> = (0..k).map(|_| next()).collect();
                let mut b = row.clone();
                let mut scratch = vec![0f32; k];
                let sb = fused_softmax_scalar(&mut b, &mut scratch, inv_t, min_m);
                for &(name, simd) in &simds {
                    let mut a = row.clone();
                    // Past the row, the scratch must not matter (the masked tail reads none of it).
                    let mut scratch = vec![f32::NAN; k + 5];
                    let sa = simd(&mut a, &mut scratch, inv_t, min_m);
                    assert_eq!((sa.argmax, sa.best_cos), (sb.argmax, sb.best_cos), "{name}");
                    assert!((sa.objective - sb.objective).abs() < 1e-5, "{name}");
                    for (x, y) in a.iter().zip(&b) {
                        assert!((x - y).abs() < 1e-6, "{name} k={k} inv_t={inv_t}: {x} vs {y}");
                    }
                    assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{name}");
                    let want: Vec<(u32, f32)> = a.iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(c, &v)| (c as u32, v)).collect();
                    for (version, push) in nonzero_pushers() {
                        let mut nz = Vec::new();
                        push(&a, &mut nz);
                        assert_eq!(nz, want, "{name} row, {version} nonzeros");
                    }
                }
            }
        }
        // Ties for the max: the first index, in a whole vector, across vectors and in a tail.
        for (k, first, second) in [(37, 17, 33), (37, 3, 5), (40, 34, 39), (16, 15, 15)] {
            for &(name, simd) in &simds {
                let mut row = vec![0.5f32; k];
                (row[first], row[second]) = (0.9, 0.9);
                let mut scratch = vec![0f32; k];
                assert_eq!(simd(&mut row, &mut scratch, 10.0, 0.01).argmax, first, "{name}, k = {k}");
            }
        }
    }

    #[test]
    fn the_float32_window_test_is_the_float64_one() {
        // Windows float32 rounds up, down, or holds exactly.
        for window in (1..200).map(|i| 14.0 * 0.0001 * f64::from(i) + 1e-5).chain([0.25, 0.5]) {
            let w = f32_at_or_above(window);
            // Every float32 within a few steps of the window, on both sides.
            let mid = (window as f32).to_bits();
            for bits in mid - 4..=mid + 4 {
                let x = f32::from_bits(bits);
                assert_eq!(x < w, f64::from(x) < window, "window {window}, x {x}");
            }
        }
    }

    #[test]
    fn softmax_exact_counts_far_entries_in_the_sum_and_keeps_the_first_maximum() {
        // 3997 entries 15 T below a tie for the maximum (indices 7 and 9) and one near entry:
        // each far exponential is e^-15 of the largest, together 0.05% of the sum, and at
        // minMembership 0.3 that decides whether entry 100 passes the threshold (it does not).
        let (t, far) = (0.01, 3997.0 * (-15f64).exp());
        let e100 = (0.6 + 0.5 * 0.3 * far) / 0.7; // inside [2M, M (2 + far)) / (1 - M)
        let mut row = vec![0.5 - 15.0 * t as f32; 4000];
        (row[7], row[9], row[100]) = (0.5, 0.5, (0.5 + t * e100.ln()) as f32);
        let cos: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        for min_membership in [0.01, 0.3, 0.0] {
            let e: Vec<f64> = cos.iter().map(|&c| ((c - 0.5) / t).exp()).collect();
            let threshold = min_membership * e.iter().sum::<f64>();
            let kept: f64 = e.iter().enumerate().filter(|&(c, &v)| v >= threshold || c == 7).map(|(_, &v)| v).sum();
            let want: Vec<f64> = e.iter().enumerate().map(|(c, &v)| if v >= threshold || c == 7 { v / kept } else { 0.0 }).collect();
            let mut got = row.clone();
            let params = MembershipParams { temperature: t, min_membership };
            let s = softmax_exact(&mut got, |c| cos[c], params, &mut ExactScratch::default());
            assert_eq!((s.argmax, s.best_cos), (7, 0.5), "M = {min_membership}");
            assert_eq!(got[100] > 0.0, min_membership < 0.3, "M = {min_membership}: entry 100");
            for (c, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((f64::from(g) - w).abs() < 1e-7 * w.max(1e-3), "M = {min_membership}, entry {c}: {g} vs {w}");
            }
            let objective: f64 = want.iter().zip(&cos).map(|(p, c)| p * c).sum();
            assert!((f64::from(s.objective) - objective).abs() < 1e-6);
        }
    }

    #[test]
    fn gemm_crates_agree() {
        let (m, k, n) = (37, 19, 23);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        for g in [GemmCrate::Gemm, GemmCrate::MatrixMultiply] {
            let mut c = vec![1f32; m * n];
            g.multiply(m, k, n, &a, (k, 1), &b, (n, 1), &mut c, n, false);
            c.iter().zip(&want).for_each(|(x, y)| assert!((x - y).abs() < 1e-4, "{g:?}"));
            g.multiply(m, k, n, &a, (k, 1), &b, (n, 1), &mut c, n, true);
            c.iter().zip(&want).for_each(|(x, y)| assert!((x - 2.0 * y).abs() < 1e-4, "{g:?} accumulate"));
        }
    }
}
