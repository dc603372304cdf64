//! Unit rows kept in float16 and their cosines to a few float32 rows: the k-means++ step. Each of
//! its K steps reads every seeding row for a handful of candidates: bound by arithmetic (the FMAs
//! and float16 conversions), not by reading the rows, which stay in cache. The SIMD kernels take
//! two rows and four candidates at once (eight accumulator chains, each candidate vector loaded
//! once for both rows), each dot summed in the same order as a row alone; on 16,384 x 768 rows
//! and 8 candidates, one thread, that is 3.0 ms a step against 3.6-3.8 ms a row at a time
//! (four rows at once, sixteen accumulators, spilled two to the stack and was no faster).
//! float16 halves the bytes; its rounding (about 1e-3 on a cosine) only nudges which tokens
//! k-means++ draws.

use half::f16;
use rayon::prelude::*;

/// Rows per unit of parallel work (each row's cosines are computed the same way whatever the
/// thread count, so the result does not depend on it).
const BLOCK: usize = 256;

/// `n` rows of `d` float16 values.
#[derive(Debug, Clone)]
pub struct HalfRows {
    d: usize,
    data: Vec<f16>,
}

impl HalfRows {
    /// The rows of `rows` (float32, `d` values each), rounded to float16.
    pub fn from_f32(rows: &[f32], d: usize) -> Self {
        HalfRows { d, data: rows.par_iter().map(|&v| f16::from_f32(v)).collect() }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.d.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i` as float32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        self.data[i * self.d..(i + 1) * self.d].iter().map(|v| v.to_f32()).collect()
    }

    /// `out[i * t + c]` = row `i` . `others[c]`, for `t` float32 rows `others` (`[t, d]`).
    pub fn dots(&self, others: &[f32]) -> Vec<f32> {
        let d = self.d;
        let t = others.len() / d.max(1);
        let mut out = vec![0f32; self.len() * t];
        if t == 0 || d == 0 {
            return out;
        }
        let kernel = Kernel::detect();
        let r = kernel.rows_at_once();
        let padded = Padded::new(others, d);
        out.par_chunks_mut(BLOCK * t).zip(self.data.par_chunks(BLOCK * d)).for_each(|(out, rows)| {
            let whole = rows.len() / (r * d) * r;
            let (block_rows, rest) = rows.split_at(whole * d);
            let (block_out, rest_out) = out.split_at_mut(whole * t);
            for (rows, out) in block_rows.chunks_exact(r * d).zip(block_out.chunks_exact_mut(r * t)) {
                kernel.block_dots(rows, &padded, out);
            }
            for (row, out) in rest.chunks_exact(d).zip(rest_out.chunks_exact_mut(t)) {
                kernel.row_dots(row, others, out);
            }
        });
        out
    }
}

/// Candidate rows followed by zero rows up to a multiple of four (what `block_dots` reads).
struct Padded(Vec<f32>);

impl Padded {
    fn new(others: &[f32], d: usize) -> Self {
        let mut rows = others.to_vec();
        rows.resize(others.len().div_ceil(4 * d) * 4 * d, 0.0);
        Padded(rows)
    }
}

/// The widest instructions this CPU has, chosen once per call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU can run (for the tests that hold them to the scalar one).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut all = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c") {
                all.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
        }
        all
    }

    /// Rows that `block_dots` takes at once.
    fn rows_at_once(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx2 => 2,
            Kernel::Scalar => 1,
        }
    }

    /// `out[r * t + c]` = row `r` of `rows` . `others[c]` for the `rows_at_once()` rows of
    /// `rows`, candidates four at a time (`others` padded with zero rows to a multiple of four,
    /// `Padded`): each dot is the one `row_dots` gives.
    fn block_dots(self, rows: &[f16], others: &Padded, out: &mut [f32]) {
        let r = self.rows_at_once();
        let (d, t) = (rows.len() / r, out.len() / r);
        let mut dots = [0f32; 4 * 2];
        for c in (0..t).step_by(4) {
            let (g, group) = (4.min(t - c), &others.0[c * d..(c + 4) * d]);
            match self {
                // SAFETY: `detect` (or `available`) checked the features.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => unsafe { x86::block_avx512(rows, group, &mut dots) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::block_avx2(rows, group, &mut dots) },
                Kernel::Scalar => scalar_dots(rows, group, &mut dots[..4]),
            }
            for (i, row_dots) in dots[..4 * r].chunks_exact(4).enumerate() {
                out[i * t + c..i * t + c + g].copy_from_slice(&row_dots[..g]);
            }
        }
    }

    /// `out[c]` = `row` . `others[c]`, candidates four at a time (one accumulator each).
    fn row_dots(self, row: &[f16], others: &[f32], out: &mut [f32]) {
        let d = row.len();
        for (c, out) in out.chunks_mut(4).enumerate() {
            let group = &others[4 * c * d..(4 * c + out.len()) * d];
            match self {
                // SAFETY: `detect` (or `available`) checked the features.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => unsafe { x86::dots_avx512(row, group, out) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::dots_avx2(row, group, out) },
                Kernel::Scalar => scalar_dots(row, group, out),
            }
        }
    }
}

fn scalar_dots(row: &[f16], others: &[f32], out: &mut [f32]) {
    for (o, other) in out.iter_mut().zip(others.chunks_exact(row.len())) {
        *o = row.iter().zip(other).map(|(&x, &y)| x.to_f32() * y).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::kernels::cpu::avx2::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    /// The dot products past the last full vector, added to `out`.
    fn tails(row: &[f16], others: &[f32], from: usize, out: &mut [f32]) {
        let d = row.len();
        for (c, o) in out.iter_mut().enumerate() {
            *o += (from..d).map(|i| row[i].to_f32() * others[c * d + i]).sum::<f32>();
        }
    }

    /// The dot products of `row` with the `G` rows of `others`, sixteen lanes at a time (`G`
    /// fixed, so that the accumulators stay in registers).
    #[target_feature(enable = "avx512f")]
    unsafe fn group_avx512<const G: usize>(row: &[f16], others: &[f32], out: &mut [f32]) {
        let d = row.len();
        let full = d - d % 16;
        let mut acc = [_mm512_setzero_ps(); G];
        let (x, y) = (row.as_ptr().cast::<__m256i>(), others.as_ptr());
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= full <= d, and `others` holds G rows of d values.
            let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(x.byte_add(2 * i)) });
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(v, unsafe { _mm512_loadu_ps(y.add(c * d + i)) }, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(a);
        }
        tails(row, others, full, out);
    }

    /// `group_avx512` eight lanes at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group_avx2<const G: usize>(row: &[f16], others: &[f32], out: &mut [f32]) {
        let d = row.len();
        let full = d - d % 8;
        let mut acc = [_mm256_setzero_ps(); G];
        let (x, y) = (row.as_ptr().cast::<__m128i>(), others.as_ptr());
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= d, and `others` holds G rows of d values.
            let v = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.byte_add(2 * i)) });
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(v, unsafe { _mm256_loadu_ps(y.add(c * d + i)) }, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        tails(row, others, full, out);
    }

    /// The dot products of two consecutive rows of `rows` with the four rows of `others`,
    /// `out[r * 4 + c]`: `group_avx512` on two rows at once, every dot summed in the same order.
    /// Eight accumulators: enough chains to keep both FMA ports busy, few enough that they stay
    /// in registers (with sixteen, held in an array or not, two went to the stack).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(rows: &[f16], others: &[f32], out: &mut [f32]) {
        let d = rows.len() / 2;
        assert!(rows.len() == 2 * d && others.len() == 4 * d && out.len() == 8);
        let full = d - d % 16;
        let z = _mm512_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03, mut a10, mut a11, mut a12, mut a13) = (z, z, z, z, z, z, z, z);
        let (x, y) = (rows.as_ptr().cast::<__m256i>(), others.as_ptr());
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= full <= d; `rows` holds two rows and `others` four of d values (asserted).
            unsafe {
                let (c0, c1, c2, c3) = (_mm512_loadu_ps(y.add(i)), _mm512_loadu_ps(y.add(d + i)), _mm512_loadu_ps(y.add(2 * d + i)), _mm512_loadu_ps(y.add(3 * d + i)));
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(x.byte_add(2 * i)));
                (a00, a01, a02, a03) = (_mm512_fmadd_ps(v, c0, a00), _mm512_fmadd_ps(v, c1, a01), _mm512_fmadd_ps(v, c2, a02), _mm512_fmadd_ps(v, c3, a03));
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(x.byte_add(2 * (d + i))));
                (a10, a11, a12, a13) = (_mm512_fmadd_ps(v, c0, a10), _mm512_fmadd_ps(v, c1, a11), _mm512_fmadd_ps(v, c2, a12), _mm512_fmadd_ps(v, c3, a13));
            }
        }
        for (o, a) in out.iter_mut().zip([a00, a01, a02, a03, a10, a11, a12, a13]) {
            *o = _mm512_reduce_add_ps(a);
        }
        for (r, out) in out.chunks_exact_mut(4).enumerate() {
            tails(&rows[r * d..(r + 1) * d], others, full, out);
        }
    }

    /// `block_avx512` eight lanes at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block_avx2(rows: &[f16], others: &[f32], out: &mut [f32]) {
        let d = rows.len() / 2;
        assert!(rows.len() == 2 * d && others.len() == 4 * d && out.len() == 8);
        let full = d - d % 8;
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03, mut a10, mut a11, mut a12, mut a13) = (z, z, z, z, z, z, z, z);
        let (x, y) = (rows.as_ptr().cast::<__m128i>(), others.as_ptr());
        for i in (0..full).step_by(8) {
            // SAFETY: as `block_avx512`, with two rows.
            unsafe {
                let (c0, c1, c2, c3) = (_mm256_loadu_ps(y.add(i)), _mm256_loadu_ps(y.add(d + i)), _mm256_loadu_ps(y.add(2 * d + i)), _mm256_loadu_ps(y.add(3 * d + i)));
                let v = _mm256_cvtph_ps(_mm_loadu_si128(x.byte_add(2 * i)));
                (a00, a01, a02, a03) = (_mm256_fmadd_ps(v, c0, a00), _mm256_fmadd_ps(v, c1, a01), _mm256_fmadd_ps(v, c2, a02), _mm256_fmadd_ps(v, c3, a03));
                let v = _mm256_cvtph_ps(_mm_loadu_si128(x.byte_add(2 * (d + i))));
                (a10, a11, a12, a13) = (_mm256_fmadd_ps(v, c0, a10), _mm256_fmadd_ps(v, c1, a11), _mm256_fmadd_ps(v, c2, a12), _mm256_fmadd_ps(v, c3, a13));
            }
        }
        for (o, a) in out.iter_mut().zip([a00, a01, a02, a03, a10, a11, a12, a13]) {
            *o = hsum(a);
        }
        for (r, out) in out.chunks_exact_mut(4).enumerate() {
            tails(&rows[r * d..(r + 1) * d], others, full, out);
        }
    }

    /// One to four dot products of `row` with the rows of `others` (AVX-512).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots_avx512(row: &[f16], others: &[f32], out: &mut [f32]) {
        assert!((1..=4).contains(&out.len()) && others.len() == out.len() * row.len());
        // SAFETY: the caller checked the features; `others` holds `out.len()` rows (asserted).
        unsafe {
            match out.len() {
                4 => group_avx512::<4>(row, others, out),
                3 => group_avx512::<3>(row, others, out),
                2 => group_avx512::<2>(row, others, out),
                _ => group_avx512::<1>(row, others, out),
            }
        }
    }

    /// One to four dot products of `row` with the rows of `others` (AVX2).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots_avx2(row: &[f16], others: &[f32], out: &mut [f32]) {
        assert!((1..=4).contains(&out.len()) && others.len() == out.len() * row.len());
        // SAFETY: as `dots_avx512`.
        unsafe {
            match out.len() {
                4 => group_avx2::<4>(row, others, out),
                3 => group_avx2::<3>(row, others, out),
                2 => group_avx2::<2>(row, others, out),
                _ => group_avx2::<1>(row, others, out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, d: usize, salt: usize) -> Vec<f32> {
        (0..n * d).map(|i| (((i + salt) * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn every_kernel_gives_the_float64_dot_of_the_rounded_rows() {
        // Dimensions with and without a tail past the vectors, candidate counts across groups of 4.
        for (n, d, t) in [(300, 768, 7), (5, 37, 1), (3, 16, 4), (2, 9, 9), (600, 100, 3)] {
            let (x, c) = (rows(n, d, 1), rows(t, d, 7));
            let half = HalfRows::from_f32(&x, d);
            for kernel in Kernel::available() {
                for i in 0..n {
                    let row = &half.data[i * d..(i + 1) * d];
                    let mut out = vec![f32::NAN; t];
                    kernel.row_dots(row, &c, &mut out);
                    for (j, &got) in out.iter().enumerate() {
                        let want: f64 = row.iter().zip(&c[j * d..(j + 1) * d]).map(|(&a, &b)| f64::from(a.to_f32()) * f64::from(b)).sum();
                        assert!((f64::from(got) - want).abs() <= 1e-5 * d as f64, "{kernel:?} n {n} d {d} row {i} candidate {j}: {got} vs {want}");
                    }
                }
            }
            // The parallel call is the rows' kernel dots, in place.
            let all = half.dots(&c);
            let mut one = vec![0f32; t];
            Kernel::detect().row_dots(&half.data[(n - 1) * d..], &c, &mut one);
            assert_eq!(&all[(n - 1) * t..], &one[..]);
        }
    }

    #[test]
    fn blocks_of_rows_give_each_row_its_own_dots_bit_for_bit() {
        // Candidate counts across groups of 4, dimensions with and without a tail.
        for (d, t) in [(768, 8), (37, 3), (16, 4), (9, 5), (100, 1)] {
            for kernel in Kernel::available() {
                let r = kernel.rows_at_once();
                let (x, c) = (rows(r, d, 3), rows(t, d, 11));
                let half = HalfRows::from_f32(&x, d);
                let mut block = vec![f32::NAN; r * t];
                kernel.block_dots(&half.data, &Padded::new(&c, d), &mut block);
                for i in 0..r {
                    let mut one = vec![f32::NAN; t];
                    kernel.row_dots(&half.data[i * d..(i + 1) * d], &c, &mut one);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&block[i * t..(i + 1) * t]), bits(&one), "{kernel:?} d {d} t {t} row {i}");
                }
            }
        }
        // The parallel call: whole blocks and the rows left over.
        let (n, d, t) = (2 * super::BLOCK + 7, 40, 6);
        let (x, c) = (rows(n, d, 5), rows(t, d, 2));
        let half = HalfRows::from_f32(&x, d);
        let all = half.dots(&c);
        for i in 0..n {
            let mut one = vec![0f32; t];
            Kernel::detect().row_dots(&half.data[i * d..(i + 1) * d], &c, &mut one);
            assert_eq!(&all[i * t..(i + 1) * t], &one[..], "row {i}");
        }
    }

    #[test]
    fn rows_round_trip_through_float16() {
        let x = rows(4, 10, 3);
        let half = HalfRows::from_f32(&x, 10);
        assert_eq!(half.len(), 4);
        for (got, want) in half.row(2).iter().zip(&x[20..30]) {
            assert!((got - want).abs() <= 1e-3 * want.abs().max(1e-3), "{got} vs {want}");
        }
    }
}
