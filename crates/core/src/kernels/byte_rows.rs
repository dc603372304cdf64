//! Unit rows kept in 8 bits per value and their cosines to a few float32 rows: the k-means++
//! step. Each of its K steps reads every seeding row for a handful of candidates, and in float16
//! the step was bound by its multiply-adds and conversions (16,384 x 768 rows, 8 candidates:
//! 1.6-2.0 ms on 2 cores, 3.0 ms on one). Here each column of the rows has its own scale
//! (activations have a few columns far larger than the rest) and each candidate, scaled by the
//! columns, one more: the dot products are integer sums, exact in any order, so every kernel
//! (AVX-512 VNNI, 64 products an instruction, two rows at a time; AVX2; portable) gives the same
//! bits on any CPU. Same rows: 0.94-0.97 ms on 2 cores, 1.5 ms on one. The rounding (about 1e-3
//! on a cosine, at most 1.5e-2 on the quality bench's activations) only nudges which tokens
//! k-means++ draws: the hard objective of the fits on that bench's 9 real cases moved by +0.0001
//! on average over 4 seeds (benches/RESULTS.md).

use rayon::prelude::*;

/// Rows per unit of parallel work (each row's dots are computed the same way whatever the
/// thread count).
const BLOCK: usize = 256;
/// Row length is padded to a multiple of this with zeros (stored as 128), so kernels have no tail.
const LANES: usize = 64;

/// `n` rows of `d` values, `x[i][j] ~ scale[j] * (data[i][j] - 128)`.
#[derive(Debug, Clone)]
pub struct ByteRows {
    d: usize,
    /// `d` rounded up to a multiple of `LANES`: the stride of `data`.
    stride: usize,
    data: Vec<u8>,
    scale: Vec<f32>,
}

/// Candidates quantized against the rows' column scales: `c . x_i ~ unit * (sum_j p_j data[i][j]
/// - 128 sum_j p_j)`.
struct Candidates {
    /// `[t, stride]`, zero past `d`.
    p: Vec<i8>,
    /// The same values as 16-bit integers (what the AVX2 kernel multiplies).
    p16: Vec<i16>,
    /// `128 * sum_j p_j` per candidate.
    offset: Vec<i32>,
    unit: Vec<f32>,
}

impl ByteRows {
    /// The rows of `rows` (float32, `d` values each), each column scaled by its largest magnitude
    /// over all rows to -127..=127.
    pub fn from_f32(rows: &[f32], d: usize) -> Self {
        let stride = d.div_ceil(LANES) * LANES;
        let largest = rows
            .par_chunks(d.max(1) * BLOCK)
            .map(|block| {
                let mut m = vec![0f32; d];
                block.chunks_exact(d).for_each(|r| m.iter_mut().zip(r).for_each(|(m, &v)| *m = m.max(v.abs())));
                m
            })
            .reduce(|| vec![0f32; d], |a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect());
        let scale: Vec<f32> = largest.iter().map(|&m| m / 127.0).collect();
        let inverse: Vec<f32> = scale.iter().map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 }).collect();
        let mut data = vec![128u8; rows.len() / d.max(1) * stride];
        data.par_chunks_mut(stride).zip(rows.par_chunks(d.max(1))).for_each(|(q, r)| {
            for ((q, &v), &inv) in q.iter_mut().zip(r).zip(&inverse) {
                *q = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
            }
        });
        ByteRows { d, stride, data, scale }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.data.len() / self.stride.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `t` float32 rows (`[t, d]`) against the column scales, each to -127..=127 by its own unit.
    fn candidates(&self, others: &[f32]) -> Candidates {
        let (d, stride) = (self.d, self.stride);
        let t = others.len() / d.max(1);
        let mut p = vec![0i8; t * stride];
        let (mut offset, mut unit) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for (c, row) in others.chunks_exact(d.max(1)).enumerate() {
            let w: Vec<f32> = row.iter().zip(&self.scale).map(|(&v, &s)| v * s).collect();
            let u = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let inv = if u > 0.0 { 1.0 / u } else { 0.0 };
            let q = &mut p[c * stride..c * stride + d];
            q.iter_mut().zip(&w).for_each(|(q, &w)| *q = (w * inv).round().clamp(-127.0, 127.0) as i8);
            offset.push(128 * q.iter().map(|&v| i32::from(v)).sum::<i32>());
            unit.push(u);
        }
        let p16 = p.iter().map(|&v| i16::from(v)).collect();
        Candidates { p, p16, offset, unit }
    }

    /// `out[i * t + c]` ~ row `i` . `others[c]`, for `t` float32 rows `others` (`[t, d]`).
    pub fn dots(&self, others: &[f32]) -> Vec<f32> {
        let t = others.len() / self.d.max(1);
        let mut out = vec![0f32; self.len() * t];
        if t == 0 || self.d == 0 {
            return out;
        }
        let cand = self.candidates(others);
        let kernel = Kernel::detect();
        let stride = self.stride;
        out.par_chunks_mut(BLOCK * t).zip(self.data.par_chunks(BLOCK * stride)).for_each(|(out, rows)| {
            let mut sums = vec![0i32; 2 * t];
            for (pair, out) in rows.chunks(2 * stride).zip(out.chunks_mut(2 * t)) {
                let sums = &mut sums[..out.len()];
                kernel.rows_sums(pair, &cand, sums);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (sums[i] - cand.offset[i % t]) as f32 * cand.unit[i % t];
                }
            }
        });
        out
    }
}

/// The widest instructions this CPU has, chosen once per call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni") {
                return Kernel::Vnni512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (for the tests that hold them to the portable one).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni") {
                all.push(Kernel::Vnni512);
            }
        }
        all
    }

    /// `sums[r * t + c] = sum_j rows[r][j] * p_c[j]` (exact) for the one or two rows of `rows`.
    fn rows_sums(self, rows: &[u8], cand: &Candidates, sums: &mut [i32]) {
        let t = cand.unit.len();
        let stride = cand.p.len() / t;
        match self {
            // SAFETY: `detect` (or `available`) checked the features; `sums_vnni512` asserts the lengths.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni512 => unsafe { x86::sums_vnni512(rows, &cand.p, stride, sums) },
            _ => {
                for (row, sums) in rows.chunks_exact(stride).zip(sums.chunks_exact_mut(t)) {
                    self.row_sums(row, cand, sums);
                }
            }
        }
    }

    /// `sums[c] = sum_j row[j] * p_c[j]` (exact).
    fn row_sums(self, row: &[u8], cand: &Candidates, sums: &mut [i32]) {
        let stride = row.len();
        assert!(cand.p.len() == sums.len() * stride && stride.is_multiple_of(LANES));
        match self {
            // SAFETY: as in `rows_sums`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni512 => unsafe { x86::sums_vnni512(row, &cand.p, stride, sums) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::sums_avx2(row, &cand.p16, sums) },
            Kernel::Portable => {
                for (s, p) in sums.iter_mut().zip(cand.p.chunks_exact(stride)) {
                    *s = row.iter().zip(p).map(|(&x, &p)| i32::from(x) * i32::from(p)).sum();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One or two rows (`row.len()` a multiple of the candidates' stride) against four
    /// candidates at a time, `sums[r * t + c]`, 64 byte products per instruction: two rows give
    /// eight accumulator chains, enough to hide the instruction's latency.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn sums_vnni512(rows: &[u8], p: &[i8], stride: usize, sums: &mut [i32]) {
        let (n_rows, t) = (rows.len() / stride, p.len() / stride);
        assert!(stride.is_multiple_of(64) && (1..=2).contains(&n_rows) && rows.len() == n_rows * stride && p.len() == t * stride && sums.len() == n_rows * t);
        let (x, y) = (rows.as_ptr(), p.as_ptr());
        // The second row is the first again when there is one row (its sums are not written).
        let x1 = if n_rows == 2 { stride } else { 0 };
        for c in (0..t).step_by(4) {
            let g = 4.min(t - c);
            let z = _mm512_setzero_si512();
            let (mut a0, mut a1, mut a2, mut a3, mut b0, mut b1, mut b2, mut b3) = (z, z, z, z, z, z, z, z);
            for i in (0..stride).step_by(64) {
                // SAFETY: i + 64 <= stride; `rows` holds `n_rows` rows and `p` `t` candidates of
                // `stride` bytes (asserted); candidates past `t` read the last one again.
                unsafe {
                    let (v, w) = (_mm512_loadu_si512(x.add(i).cast()), _mm512_loadu_si512(x.add(x1 + i).cast()));
                    let at = |k: usize| _mm512_loadu_si512(y.add((c + k.min(g - 1)) * stride + i).cast());
                    let (p0, p1, p2, p3) = (at(0), at(1), at(2), at(3));
                    (a0, a1, a2, a3) = (_mm512_dpbusd_epi32(a0, v, p0), _mm512_dpbusd_epi32(a1, v, p1), _mm512_dpbusd_epi32(a2, v, p2), _mm512_dpbusd_epi32(a3, v, p3));
                    (b0, b1, b2, b3) = (_mm512_dpbusd_epi32(b0, w, p0), _mm512_dpbusd_epi32(b1, w, p1), _mm512_dpbusd_epi32(b2, w, p2), _mm512_dpbusd_epi32(b3, w, p3));
                }
            }
            for (s, a) in sums[c..c + g].iter_mut().zip([a0, a1, a2, a3]) {
                *s = _mm512_reduce_add_epi32(a);
            }
            if n_rows == 2 {
                for (s, b) in sums[t + c..t + c + g].iter_mut().zip([b0, b1, b2, b3]) {
                    *s = _mm512_reduce_add_epi32(b);
                }
            }
        }
    }

    /// Sixteen bytes at a time widened to 16 bits, two products summed per 32-bit lane.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sums_avx2(row: &[u8], p16: &[i16], sums: &mut [i32]) {
        let stride = row.len();
        let (x, y) = (row.as_ptr(), p16.as_ptr());
        for (c, s) in sums.iter_mut().enumerate() {
            let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for i in (0..stride).step_by(32) {
                // SAFETY: i + 32 <= stride; `p16` holds `sums.len()` candidates of `stride` values.
                unsafe {
                    let v0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(i).cast()));
                    let v1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(i + 16).cast()));
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v0, _mm256_loadu_si256(y.add(c * stride + i).cast())));
                    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v1, _mm256_loadu_si256(y.add(c * stride + i + 16).cast())));
                }
            }
            let a = _mm256_add_epi32(a0, a1);
            let h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
            let h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0b01_00_11_10));
            *s = _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, 0b10_11_00_01)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit rows with a few large columns, as activations have.
    fn unit_rows(n: usize, d: usize, salt: usize) -> Vec<f32> {
        let mut rows: Vec<f32> = (0..n * d)
            .map(|i| {
                let v = (((i + salt) * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0;
                if i % d == 3 { 8.0 * v } else { v }
            })
            .collect();
        for r in rows.chunks_exact_mut(d) {
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            r.iter_mut().for_each(|v| *v /= norm);
        }
        rows
    }

    #[test]
    fn every_kernel_gives_the_exact_integer_sums() {
        for (n, d, t) in [(300, 768, 8), (5, 37, 1), (3, 64, 4), (2, 9, 9), (600, 100, 3), (4, 130, 5)] {
            let (x, c) = (unit_rows(n, d, 1), unit_rows(t, d, 7));
            let rows = ByteRows::from_f32(&x, d);
            let cand = rows.candidates(&c);
            for i in 0..n {
                let row = &rows.data[i * rows.stride..(i + 1) * rows.stride];
                let want: Vec<i32> = (0..t).map(|k| row.iter().zip(&cand.p[k * rows.stride..]).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum()).collect();
                for kernel in Kernel::available() {
                    let mut got = vec![i32::MIN; t];
                    kernel.row_sums(row, &cand, &mut got);
                    assert_eq!(got, want, "{kernel:?} n {n} d {d} t {t} row {i}");
                    // The same row second in a pair, after the previous row (or alone for row 0).
                    let pair = &rows.data[i.saturating_sub(1) * rows.stride..(i + 1) * rows.stride];
                    let mut got = vec![i32::MIN; pair.len() / rows.stride * t];
                    kernel.rows_sums(pair, &cand, &mut got);
                    assert_eq!(&got[got.len() - t..], &want[..], "{kernel:?} pair ending at row {i}");
                }
            }
        }
    }

    #[test]
    fn dots_are_within_the_rounding_of_both_sides() {
        for (n, d, t) in [(500, 768, 8), (50, 37, 3)] {
            let (x, c) = (unit_rows(n, d, 3), unit_rows(t, d, 11));
            let rows = ByteRows::from_f32(&x, d);
            let cand = rows.candidates(&c);
            let dots = rows.dots(&c);
            for i in 0..n {
                for k in 0..t {
                    let xi = &x[i * d..(i + 1) * d];
                    let exact: f64 = xi.iter().zip(&c[k * d..]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    // Each row value is off by at most half its column's step, each scaled
                    // candidate value by half the candidate's unit.
                    let bound: f64 = (0..d)
                        .map(|j| {
                            let (s, u) = (f64::from(rows.scale[j]), f64::from(cand.unit[k]));
                            0.5 * s * f64::from(c[k * d + j]).abs() + 0.5 * u * (f64::from(xi[j]).abs() / s.max(f64::MIN_POSITIVE) + 0.5)
                        })
                        .sum::<f64>()
                        + 1e-5;
                    let got = f64::from(dots[i * t + k]);
                    assert!((got - exact).abs() <= bound, "row {i} candidate {k}: {got} vs {exact} (bound {bound})");
                }
            }
        }
    }
}
