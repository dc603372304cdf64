//! A chunk as every reader hands it over (docs/formats.md "Input chunks"): `B` sequences of `S`
//! positions of `D`-dimensional activations in their stored dtype, with the attention mask and
//! token ids, and the checks every format shares. The readers are in `npz`, `safetensors_chunk`, `arrow_chunk`;
//! `sources` picks one by file.

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::sync::RwLock;

static KEY: RwLock<Option<String>> = RwLock::new(None);

/// Sets, for the whole process, the name of the activations tensor of safetensors files and
/// column of Arrow files (the CLI's `--key`); `None` restores the default: `activations`, or else
/// the file's only float tensor of rank 2 or 3 (only 2-D float column).
pub fn set_activations_key(key: Option<String>) {
    *KEY.write().unwrap_or_else(|p| p.into_inner()) = key;
}

pub(crate) fn activations_key() -> Option<String> {
    KEY.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Activation vectors of one chunk, row-major `[B * S, D]`, in the dtype they were stored in
/// (float64 keeps its precision until rows are normalized; float16 and bfloat16 stay half the
/// size).
#[derive(Debug, Clone, PartialEq)]
pub enum Activations {
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A dtype activations are stored in: its `Activations` variant both ways (for buffers handed
/// from one chunk to the next, `memory::array_to_fill`).
pub(crate) trait StoredDtype: bytemuck::Pod + Send {
    fn wrap(values: Vec<Self>) -> Activations;
    fn unwrap(activations: Activations) -> std::result::Result<Vec<Self>, Activations>;
}

macro_rules! stored_dtype {
    ($($t:ty => $variant:ident),*) => {$(
        impl StoredDtype for $t {
            fn wrap(values: Vec<Self>) -> Activations {
                Activations::$variant(values)
            }
            fn unwrap(activations: Activations) -> std::result::Result<Vec<Self>, Activations> {
                match activations {
                    Activations::$variant(values) => Ok(values),
                    other => Err(other),
                }
            }
        }
    )*};
}
stored_dtype!(bf16 => BF16, f16 => F16, f32 => F32, f64 => F64);

impl Activations {
    pub fn len(&self) -> usize {
        match self {
            Activations::BF16(v) => v.len(),
            Activations::F16(v) => v.len(),
            Activations::F32(v) => v.len(),
            Activations::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per stored value.
    pub fn element_bytes(&self) -> usize {
        match self {
            Activations::BF16(_) | Activations::F16(_) => 2,
            Activations::F32(_) => 4,
            Activations::F64(_) => 8,
        }
    }

    /// numpy's name of the stored dtype.
    pub fn dtype(&self) -> &'static str {
        match self {
            Activations::BF16(_) => "bfloat16",
            Activations::F16(_) => "float16",
            Activations::F32(_) => "float32",
            Activations::F64(_) => "float64",
        }
    }

    pub fn as_ref(&self) -> ActivationsRef<'_> {
        match self {
            Activations::BF16(v) => ActivationsRef::BF16(v),
            Activations::F16(v) => ActivationsRef::F16(v),
            Activations::F32(v) => ActivationsRef::F32(v),
            Activations::F64(v) => ActivationsRef::F64(v),
        }
    }

    /// Widens every element to float32 (for callers that want to look at a chunk).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Activations::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Activations::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Activations::F32(v) => v.clone(),
            Activations::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// A borrowed view of activations, what the kernels read from.
#[derive(Debug, Clone, Copy)]
pub enum ActivationsRef<'a> {
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl ActivationsRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            ActivationsRef::BF16(v) => v.len(),
            ActivationsRef::F16(v) => v.len(),
            ActivationsRef::F32(v) => v.len(),
            ActivationsRef::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One chunk in memory: `B` sequences of `S` positions of `D`-dimensional activations.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The file it came from, as given (used in every error about it).
    pub source: String,
    pub batch: usize,
    /// Index of the first sequence in its file: 0, unless the chunk is a later block of a file
    /// read in blocks (`sources::blocks`).
    pub first_row: usize,
    /// Sequences in the whole file (`batch` unless the file is read in blocks).
    pub file_batch: usize,
    pub seq_len: usize,
    pub d_model: usize,
    pub activations: Activations,
    /// `[B * S]`, 1 = real token, 0 = padding; `None` = all real.
    pub attention_mask: Option<Vec<u8>>,
    /// `[B * S]`; `None` when the chunk has no `token_ids`.
    pub token_ids: Option<Vec<i64>>,
}

impl Chunk {
    pub fn n_tokens(&self) -> usize {
        self.batch * self.seq_len
    }

    /// Refuses a chunk whose `D` is not the model's (docs/formats.md "Input chunks").
    pub fn check_d_model(&self, d_model: usize) -> Result<()> {
        if self.d_model != d_model {
            return Err(Error::BadChunk {
                file: self.source.clone(),
                array: "activations".into(),
                problem: format!("D = {} but the model's dModel is {}", self.d_model, d_model),
            });
        }
        Ok(())
    }
}

impl Chunk {
    /// The checks and fixes every reader applies last: token ids in range, extreme float64 rows
    /// rescaled.
    pub(crate) fn finished(mut self) -> Result<Self> {
        if let Some(ids) = &self.token_ids {
            check_token_ids(&self.source, ids, self.attention_mask.as_deref(), self.seq_len)?;
        }
        if let Activations::F64(values) = &mut self.activations {
            rescale_extreme_rows(values, self.d_model);
        }
        Ok(self)
    }
}

/// The largest token id JavaScript numbers hold exactly (2^53 - 1).
pub const MAX_TOKEN_ID: i64 = (1 << 53) - 1;

/// A real token's id must be in `0..=MAX_TOKEN_ID` (docs/formats.md "Input chunks"): -1 means
/// "no token" in the outputs, and larger ids would change on their way to JavaScript.
fn check_token_ids(path: &str, ids: &[i64], mask: Option<&[u8]>, seq_len: usize) -> Result<()> {
    let bad = ids.iter().enumerate().find(|&(t, &id)| !(0..=MAX_TOKEN_ID).contains(&id) && mask.is_none_or(|m| m[t] != 0));
    match bad {
        Some((t, &id)) => Err(Error::BadChunk {
            file: path.to_string(),
            array: "token_ids".into(),
            problem: 
            format!("batch {}, position {}: id {id} is out of range; a real token's id must be between 0 and 2^53 - 1 (padding positions may hold anything)", t / seq_len.max(1), t % seq_len.max(1)),
        }),
        None => Ok(()),
    }
}

/// float64 rows whose largest value is beyond 2^±500 are scaled by a power of two, which is
/// exact and keeps their direction (all that memberships depend on), so that their norms, and
/// the scale that makes them unit length, are finite normal numbers (docs/algorithm.md
/// "Memberships": tokens at any finite scale).
fn rescale_extreme_rows(values: &mut [f64], d: usize) {
    const BIG: f64 = 3.273390607896142e150; // 2^500
    const SMALL: f64 = 3.054936363499605e-151; // 2^-500
    for row in values.chunks_exact_mut(d) {
        let max = row.iter().fold(0.0f64, |m, &x| if x.is_finite() { m.max(x.abs()) } else { m });
        if max > BIG || (max > 0.0 && max < SMALL) {
            // max = f * 2^e with f in [0.5, 1); scale by 2^-e in two exact steps (2^1074 is not a float64).
            let e = exponent(max);
            let (half, rest) = (-e / 2, -e - (-e / 2));
            row.iter_mut().for_each(|x| *x = *x * power_of_two(half) * power_of_two(rest));
        }
    }
}

/// `e` such that `x = f * 2^e`, `f` in [0.5, 1), for finite `x > 0` (subnormals included).
fn exponent(x: f64) -> i32 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: 2^-1074 * mantissa.
        let mantissa = bits & ((1u64 << 52) - 1);
        -1074 + (64 - mantissa.leading_zeros() as i32)
    } else {
        biased - 1022
    }
}

/// `2^e` for `e` in [-1022, 1023].
fn power_of_two(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

#[cfg(test)]
mod scale_tests {
    use super::*;

    #[test]
    fn extreme_float64_rows_are_scaled_exactly_to_a_normal_range() {
        for x in [f64::MIN_POSITIVE, 5e-324, 1e-310, 1e-200, 1e200, 1.7e308, f64::MAX, 0.75, 3.0] {
            let e = exponent(x);
            let f = x * power_of_two((-e).clamp(-1022, 1023)) * power_of_two((-e - (-e).clamp(-1022, 1023)).clamp(-1022, 1023));
            assert!((0.5..1.0).contains(&f), "{x}: {e} -> {f}");
        }
        let mut rows = vec![1e-310, -2e-310, 0.0, 1.7e308, -1.0e308, 1e300, 1.0, 2.0, 3.0];
        rescale_extreme_rows(&mut rows, 3);
        // Directions kept exactly (ratios), magnitudes near 1; the ordinary row untouched.
        assert_eq!(rows[1] / rows[0], -2.0);
        assert!(rows[..6].chunks(3).all(|r| (0.5..1.0).contains(&r.iter().fold(0.0f64, |m, v| m.max(v.abs())))), "{rows:?}");
        assert_eq!(rows[5] / rows[3], 1e300 / 1.7e308, "exact: a power of two scales both");
        assert_eq!(&rows[6..], &[1.0, 2.0, 3.0]);
    }
}
