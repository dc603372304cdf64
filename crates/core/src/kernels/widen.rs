//! 16-bit rows widened to float32 and scaled (to unit length) on their way into the CPU GEMM.
//! With the `half` crate's slice conversion and a second pass for the scale, this took 20% of an
//! iteration at K = 256 on float16 data (a call per eight values, the package being built for
//! baseline x86-64); here one pass converts and scales sixteen values per instruction. Both
//! steps are exact or the same single multiply, so the results are bit for bit the portable ones.

use half::{bf16, f16};

/// `dst[i] = f32(src[i]) * scale`.
pub(crate) fn f16_scaled(src: &[f16], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the lengths are equal (asserted).
            return unsafe { x86::f16_avx512(src, scale, dst) };
        }
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: as above, with AVX and F16C.
            return unsafe { x86::f16_f16c(src, scale, dst) };
        }
    }
    portable(src, scale, dst);
}

/// `dst[i] = f32(src[i]) * scale`.
pub(crate) fn bf16_scaled(src: &[bf16], scale: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the lengths are equal (asserted).
            return unsafe { x86::bf16_avx512(src, scale, dst) };
        }
    }
    portable(src, scale, dst);
}

/// The `half` crate's slice conversion, then the scale: what the SIMD versions must equal.
fn portable<H>(src: &[H], scale: f32, dst: &mut [f32])
where
    [H]: half::slice::HalfFloatSliceExt,
{
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    dst.iter_mut().for_each(|d| *d *= scale);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f16_avx512(src: &[f16], scale: f32, dst: &mut [f32]) {
        let full = src.len() - src.len() % 16;
        let s = _mm512_set1_ps(scale);
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= full <= both lengths.
            unsafe {
                let v = _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().add(i).cast()));
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_mul_ps(v, s));
            }
        }
        super::portable(&src[full..], scale, &mut dst[full..]);
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_f16c(src: &[f16], scale: f32, dst: &mut [f32]) {
        let full = src.len() - src.len() % 8;
        let s = _mm256_set1_ps(scale);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= full <= both lengths.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(v, s));
            }
        }
        super::portable(&src[full..], scale, &mut dst[full..]);
    }

    /// bfloat16 is the high half of a float32: widen each 16-bit value and shift it up.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bf16_avx512(src: &[bf16], scale: f32, dst: &mut [f32]) {
        let full = src.len() - src.len() % 16;
        let s = _mm512_set1_ps(scale);
        for i in (0..full).step_by(16) {
            // SAFETY: i + 16 <= full <= both lengths.
            unsafe {
                let bits = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(src.as_ptr().add(i).cast())));
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_castsi512_ps(bits), s));
            }
        }
        super::portable(&src[full..], scale, &mut dst[full..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 16-bit pattern once (NaNs, infinities and subnormals among them), then lengths
    /// around the vector widths.
    fn patterns() -> Vec<u16> {
        (0..=u16::MAX).collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn widened_rows_are_the_portable_ones_bit_for_bit() {
        let bits = patterns();
        for scale in [1.0f32, 0.037, 3.5e4, 1e-30] {
            for len in [bits.len(), 0, 1, 7, 8, 15, 16, 17, 33, 768] {
                let h: Vec<f16> = bits[..len].iter().map(|&b| f16::from_bits(b.wrapping_mul(40_503))).collect();
                let (mut got, mut want) = (vec![0f32; len], vec![1f32; len]);
                f16_scaled(&h, scale, &mut got);
                portable(&h, scale, &mut want);
                assert!(same_bits(&got, &want), "float16, scale {scale}, length {len}");
                let b: Vec<bf16> = bits[..len].iter().map(|&b| bf16::from_bits(b.wrapping_mul(40_503))).collect();
                let (mut got, mut want) = (vec![0f32; len], vec![1f32; len]);
                bf16_scaled(&b, scale, &mut got);
                portable(&b, scale, &mut want);
                assert!(same_bits(&got, &want), "bfloat16, scale {scale}, length {len}");
            }
        }
    }

    #[test]
    fn widened_values_are_the_values_times_the_scale() {
        let h: Vec<f16> = [1.0f32, -2.5, 65504.0, 6e-8, 0.0].iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0f32; 5];
        f16_scaled(&h, 2.0, &mut out);
        assert_eq!(out, h.iter().map(|v| v.to_f32() * 2.0).collect::<Vec<_>>());
        let b: Vec<bf16> = [1.0f32, -2.5, 3.0e38, 1e-40, 0.0].iter().map(|&v| bf16::from_f32(v)).collect();
        bf16_scaled(&b, 0.5, &mut out);
        assert_eq!(out, b.iter().map(|v| v.to_f32() * 0.5).collect::<Vec<_>>());
    }
}
