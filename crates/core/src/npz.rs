//! Reading activation chunks (docs/formats.md "Input chunks"): `.npz` archives as numpy writes them, stored or deflated.
//!
//! The zip layer is the `zip` crate, the `.npy` header parser and the element decoders are
//! `ndarray-npy`'s. float16, which `ndarray-npy` does not decode, is widened through `half`.
//! Every member is checked against its header before anything is allocated, so a lying header
//! can not make us allocate more than the archive really holds.

use crate::chunk::{Activations, Chunk, StoredDtype};
use crate::error::{Error, Result};
use crate::memory::read_values_at;
use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::npy::header::Header;
use ndarray_npy::ReadableElement;
use py_literal::Value as PyValue;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

/// numpy itself refuses headers over 10 000 bytes by default; allow some room beyond that.
const MAX_HEADER_LEN: u64 = 1 << 20;

/// The largest expansion deflate can produce (a little over its 1032:1 limit).
const MAX_DEFLATE_RATIO: u64 = 1040;

/// An array decoded from one `.npy` member, in C order.
pub(crate) enum Elements {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

pub(crate) struct NpyArray {
    pub(crate) shape: Vec<usize>,
    pub(crate) descr: String,
    pub(crate) elements: Elements,
}

/// Reads and checks one `.npz` chunk file (docs/formats.md "Input chunks"). Errors name the file, the array and the problem.
pub fn read_npz_chunk(path: &Path) -> Result<Chunk> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::bad_chunk(path, "(archive)", format!("not a readable .npz (zip) file: {e}")))?;

    let activations = read_member(&mut zip, path, "activations")?
        .ok_or_else(|| Error::bad_chunk(path, "activations", "missing (the chunk must hold an `activations` array)"))?;
    let (batch, seq_len, d_model) = match activations.shape[..] {
        [b, s, d] => (b, s, d),
        [t, d] => (1, t, d),
        _ => {
            return Err(Error::bad_chunk(
                path,
                "activations",
                format!("has rank {} (shape {:?}); expected [B, S, D] or [T, D]", activations.shape.len(), activations.shape),
            ))
        }
    };
    if d_model == 0 {
        return Err(Error::bad_chunk(path, "activations", "has D = 0 (no features)"));
    }
    let rank3 = activations.shape.len() == 3;
    let activations = match activations.elements {
        Elements::F16(v) => Activations::F16(v),
        Elements::F32(v) => Activations::F32(v),
        Elements::F64(v) => Activations::F64(v),
        _ => {
            return Err(Error::bad_chunk(
                path,
                "activations",
                format!("has dtype {}; expected float16, float32 or float64", activations.descr),
            ))
        }
    };

    // Per-token arrays are [B, S]; for a [T, D] chunk [T] is accepted as well as [1, T].
    let token_shape_ok = |shape: &[usize]| shape == [batch, seq_len] || (!rank3 && shape == [seq_len]);

    let attention_mask = match read_member(&mut zip, path, "attention_mask")? {
        None => None,
        Some(a) => {
            if !token_shape_ok(&a.shape) {
                return Err(Error::bad_chunk(
                    path,
                    "attention_mask",
                    format!("has shape {:?}; expected [B, S] = [{batch}, {seq_len}] to match activations", a.shape),
                ));
            }
            Some(match a.elements {
                Elements::Bool(v) => v.into_iter().map(u8::from).collect(),
                Elements::I8(v) => nonzero(v),
                Elements::I16(v) => nonzero(v),
                Elements::I32(v) => nonzero(v),
                Elements::I64(v) => nonzero(v),
                Elements::U8(v) => nonzero(v),
                Elements::U16(v) => nonzero(v),
                Elements::U32(v) => nonzero(v),
                Elements::U64(v) => nonzero(v),
                _ => {
                    return Err(Error::bad_chunk(
                        path,
                        "attention_mask",
                        format!("has dtype {}; expected bool or an integer type", a.descr),
                    ))
                }
            })
        }
    };

    let token_ids = match read_member(&mut zip, path, "token_ids")? {
        None => None,
        Some(a) => {
            if !token_shape_ok(&a.shape) {
                return Err(Error::bad_chunk(
                    path,
                    "token_ids",
                    format!("has shape {:?}; expected [B, S] = [{batch}, {seq_len}] to match activations", a.shape),
                ));
            }
            Some(match a.elements {
                Elements::I32(v) => v.into_iter().map(i64::from).collect(),
                Elements::I64(v) => v,
                Elements::U16(v) => v.into_iter().map(i64::from).collect(),
                Elements::U32(v) => v.into_iter().map(i64::from).collect(),
                _ => {
                    return Err(Error::bad_chunk(
                        path,
                        "token_ids",
                        format!("has dtype {}; expected int32, int64, uint16 or uint32", a.descr),
                    ))
                }
            })
        }
    };

    Chunk { source: path.display().to_string(), batch, first_row: 0, file_batch: batch, seq_len, d_model, activations, attention_mask, token_ids }.finished()
}

/// `(B, S, D)` of a chunk from its `activations` header alone, without reading the data.
pub fn npz_chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::bad_chunk(path, "(archive)", format!("not a readable .npz (zip) file: {e}")))?;
    let index = zip
        .index_for_name("activations.npy")
        .or_else(|| zip.index_for_name("activations"))
        .ok_or_else(|| Error::bad_chunk(path, "activations", "missing (the chunk must hold an `activations` array)"))?;
    let mut member = zip.by_index(index).map_err(|e| Error::bad_chunk(path, "activations", format!("corrupt archive member: {e}")))?;
    let size = member.size();
    let header = read_header(&mut Counting { inner: &mut member, consumed: 0 }, size, path, "activations")?;
    if let Some(&big) = header.shape.iter().find(|&&n| n > u32::MAX as usize) {
        return Err(Error::bad_chunk(path, "activations", format!("declares a dimension of {big}, more than 2^32 - 1")));
    }
    match header.shape[..] {
        [b, s, d] => Ok((b, s, d)),
        [t, d] => Ok((1, t, d)),
        _ => Err(Error::bad_chunk(path, "activations", format!("has rank {} (shape {:?}); expected [B, S, D] or [T, D]", header.shape.len(), header.shape))),
    }
}

/// Reads a standalone `.npy` file of float32 or float64 as float32 (used for `initialCenters`).
/// Returns the shape and the C-order data.
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let array = read_npy(BufReader::new(file), size, path, "(array)")?;
    let data = match array.elements {
        Elements::F32(v) => v,
        Elements::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        Elements::F16(v) => v.into_iter().map(f32::from).collect(),
        _ => return Err(Error::bad_chunk(path, "(array)", format!("has dtype {}; expected a float type", array.descr))),
    };
    Ok((array.shape, data))
}

/// A standalone `.npy` file of activations, `[B, S, D]` or `[T, D]` float16/32/64 (no mask:
/// every token is real; no token ids). A 2-byte void dtype (`|V2`, how numpy saves
/// `ml_dtypes.bfloat16` or a raw tensor dump) is refused: it does not say what it holds.
pub fn read_npy_chunk(path: &Path) -> Result<Chunk> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    crate::memory::check_array_bytes(path, "activations", size)?;
    let mut reader = Counting { inner: BufReader::new(file), consumed: 0 };
    let header = read_header(&mut reader, size, path, "activations")?;
    if let PyValue::String(descr) = &header.type_descriptor {
        if descr.ends_with("V2") {
            return Err(Error::bad_chunk(path, "activations", format!("has dtype {descr} (2-byte void: bfloat16 saved through numpy, or raw bytes), which is ambiguous; save bfloat16 activations as safetensors (safetensors.torch.save_file)")));
        }
    }
    if let Some(native) = NativeNpy::of(&header, reader.consumed, size) {
        return native.read(reader.inner.get_ref(), path, 0, native.batch);
    }
    let array = read_npy_data(reader, header, size, path, "activations")?;
    let (batch, seq_len, d_model) = match array.shape[..] {
        [b, s, d] => (b, s, d),
        [t, d] => (1, t, d),
        _ => return Err(Error::bad_chunk(path, "activations", format!("has rank {} (shape {:?}); expected [B, S, D] or [T, D]", array.shape.len(), array.shape))),
    };
    if d_model == 0 {
        return Err(Error::bad_chunk(path, "activations", "has D = 0 (no features)"));
    }
    let activations = match array.elements {
        Elements::F16(v) => Activations::F16(v),
        Elements::F32(v) => Activations::F32(v),
        Elements::F64(v) => Activations::F64(v),
        _ => return Err(Error::bad_chunk(path, "activations", format!("has dtype {}; expected float16, float32 or float64", array.descr))),
    };
    Chunk { source: path.display().to_string(), batch, first_row: 0, file_batch: batch, seq_len, d_model, activations, attention_mask: None, token_ids: None }.finished()
}

/// The common case of a standalone `.npy`: float16/32/64 in this machine's byte order and C
/// order, `[B, S, D]` or `[T, D]`, with exactly its data after the header. Its rows are read
/// straight into their typed array (one copy, no per-value decoding), in blocks if need be; any
/// other `.npy` goes through the general path, which also names what is wrong with it.
#[derive(Clone, Copy)]
struct NativeNpy {
    /// Where the data starts in the file.
    data_at: u64,
    batch: usize,
    seq_len: usize,
    d_model: usize,
    item: usize,
}

impl NativeNpy {
    fn of(header: &Header, data_at: u64, file_size: u64) -> Option<Self> {
        let PyValue::String(descr) = &header.type_descriptor else { return None };
        let (batch, seq_len, d_model) = match header.shape[..] {
            [b, s, d] => (b, s, d),
            [t, d] => (1, t, d),
            _ => return None,
        };
        let item = match descr.as_str() {
            "<f2" => 2,
            "<f4" => 4,
            "<f8" => 8,
            _ => return None,
        };
        let fortran = header.layout.is_fortran() && header.shape.len() > 1;
        let bytes = batch.checked_mul(seq_len).and_then(|n| n.checked_mul(d_model)).and_then(|n| n.checked_mul(item));
        let exact = bytes.is_some_and(|n| n as u64 == file_size.saturating_sub(data_at));
        (cfg!(target_endian = "little") && !fortran && d_model > 0 && exact).then_some(NativeNpy { data_at, batch, seq_len, d_model, item })
    }

    /// Rows `first_row..first_row + rows` of the `.npy` `file`.
    fn read(&self, file: &File, path: &Path, first_row: usize, rows: usize) -> Result<Chunk> {
        let len = rows * self.seq_len * self.d_model;
        let at = self.data_at + (first_row * self.seq_len * self.d_model * self.item) as u64;
        let bad = |e: io::Error| Error::bad_chunk(path, "activations", format!("cannot decode data: {e}"));
        let activations = match self.item {
            2 => Activations::F16(read_values_at(file, at, len).map_err(bad)?),
            4 => Activations::F32(read_values_at(file, at, len).map_err(bad)?),
            _ => Activations::F64(read_values_at(file, at, len).map_err(bad)?),
        };
        let (batch, seq_len, d_model) = (rows, self.seq_len, self.d_model);
        Chunk { source: path.display().to_string(), batch, first_row, file_batch: self.batch, seq_len, d_model, activations, attention_mask: None, token_ids: None }.finished()
    }
}

/// A standalone `.npy` in blocks of whole sequences of at most `block_bytes` (at least one), for
/// the native case (a dump larger than memory is never read whole); any other `.npy` as one block.
pub fn npy_blocks(path: &Path, block_bytes: usize) -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = Counting { inner: BufReader::new(file), consumed: 0 };
    let header = read_header(&mut reader, size, path, "activations")?;
    let Some(native) = NativeNpy::of(&header, reader.consumed, size).filter(|n| n.batch > 0) else {
        let path = path.to_path_buf();
        return Ok(Box::new(std::iter::once_with(move || read_npy_chunk(&path))));
    };
    let rows_per_block = (block_bytes / (native.seq_len * native.d_model * native.item)).max(1);
    let source = path.to_path_buf();
    let file = reader.inner.into_inner();
    Ok(Box::new((0..native.batch).step_by(rows_per_block).map(move |first_row| native.read(&file, &source, first_row, rows_per_block.min(native.batch - first_row)))))
}

/// `(B, S, D)` of a standalone `.npy` from its header.
pub fn npy_chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let header = read_header(&mut Counting { inner: BufReader::new(file), consumed: 0 }, size, path, "activations")?;
    match header.shape[..] {
        [b, s, d] => Ok((b, s, d)),
        [t, d] => Ok((1, t, d)),
        _ => Err(Error::bad_chunk(path, "activations", format!("has rank {} (shape {:?}); expected [B, S, D] or [T, D]", header.shape.len(), header.shape))),
    }
}

fn nonzero<T: Default + PartialEq>(v: Vec<T>) -> Vec<u8> {
    let zero = T::default();
    v.into_iter().map(|x| u8::from(x != zero)).collect()
}

/// Reads member `name` (or `name.npy`, as numpy names them) if the archive has it.
pub(crate) fn read_member<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, path: &Path, name: &str) -> Result<Option<NpyArray>> {
    let npy_name = format!("{name}.npy");
    let Some(index) = zip.index_for_name(&npy_name).or_else(|| zip.index_for_name(name)) else {
        return Ok(None);
    };
    let member = zip
        .by_index(index)
        .map_err(|e| Error::bad_chunk(path, name, format!("corrupt archive member: {e}")))?;
    let size = member.size();
    // The archive's own size field is data too: bound it by what the compressed bytes can
    // expand to (deflate never exceeds ~1032:1) before trusting it for an allocation.
    let most = match member.compression() {
        zip::CompressionMethod::Stored => member.compressed_size(),
        _ => member.compressed_size().saturating_mul(MAX_DEFLATE_RATIO),
    };
    if size > most {
        return Err(Error::bad_chunk(path, name, format!("archive member claims {size} bytes from {} compressed bytes", member.compressed_size())));
    }
    crate::memory::check_array_bytes(path, name, size)?;
    if member.compression() == zip::CompressionMethod::Stored && size >= PARALLEL_READ_BYTES {
        let (start, crc) = (member.data_start(), member.crc32());
        drop(member);
        if let Some(array) = read_stored_in_parallel(path, name, start, size, crc)? {
            return Ok(Some(array));
        }
        let member = zip.by_index(index).map_err(|e| Error::bad_chunk(path, name, format!("corrupt archive member: {e}")))?;
        return read_npy(member, size, path, name).map(Some);
    }
    read_npy(member, size, path, name).map(Some)
}

/// Stored (uncompressed) members at least this large are read by several threads at once.
const PARALLEL_READ_BYTES: u64 = 1 << 20;
/// Bytes per thread task of the parallel read.
const READ_PIECE: usize = 4 << 20;

/// The fast path for the common case of large uncompressed float activations in this machine's
/// byte order and C order: the data goes straight from the file into the array in parallel
/// pieces (one thread copying from the page cache reads about 1 GB/s; the GPU wants more),
/// with the archive's CRC-32 checked over the pieces. `None` means: use the general path.
#[cfg(unix)]
fn read_stored_in_parallel(path: &Path, name: &str, start: u64, size: u64, crc: u32) -> Result<Option<NpyArray>> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    let bad = |problem: String| Error::bad_chunk(path, name, problem);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = vec![0u8; size.min(MAX_HEADER_LEN + 12) as usize];
    file.read_exact_at(&mut head, start).map_err(|e| bad(format!("cannot read the member: {e}")))?;
    let mut reader = Counting { inner: &head[..], consumed: 0 };
    let header = read_header(&mut reader, size, path, name)?;
    let consumed = reader.consumed;
    let PyValue::String(descr) = &header.type_descriptor else { return Ok(None) };
    let native = cfg!(target_endian = "little");
    let item = match descr.as_str() {
        "<f2" if native => 2,
        "<f4" if native => 4,
        "<f8" if native => 8,
        _ => return Ok(None),
    };
    if header.layout.is_fortran() && header.shape.len() > 1 {
        return Ok(None);
    }
    let len = header.shape.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    if len.and_then(|n| n.checked_mul(item)).map(|b| b as u64) != Some(size - consumed) {
        return Ok(None); // the general path says what is wrong
    }
    let len = len.expect("checked above");
    let data_at = start + consumed;
    let fill = |bytes: &mut [u8]| -> Result<crc32fast::Hasher> {
        let pieces: Vec<io::Result<crc32fast::Hasher>> = bytes
            .par_chunks_mut(READ_PIECE)
            .enumerate()
            .map(|(i, piece)| {
                file.read_exact_at(piece, data_at + (i * READ_PIECE) as u64)?;
                let mut h = crc32fast::Hasher::new();
                h.update(piece);
                Ok(h)
            })
            .collect();
        let mut all = crc32fast::Hasher::new();
        all.update(&head[..consumed as usize]);
        for piece in pieces {
            all.combine(&piece.map_err(|e| bad(format!("cannot read the member: {e}")))?);
        }
        Ok(all)
    };
    // Every value is read into the array (a reused buffer's old values do not survive).
    let (elements, hasher) = match item {
        2 => {
            let mut v: Vec<f16> = crate::memory::array_to_fill(len);
            let h = fill(bytemuck::cast_slice_mut(&mut v))?;
            (Elements::F16(v), h)
        }
        4 => {
            let mut v: Vec<f32> = crate::memory::array_to_fill(len);
            let h = fill(bytemuck::cast_slice_mut(&mut v))?;
            (Elements::F32(v), h)
        }
        _ => {
            let mut v: Vec<f64> = crate::memory::array_to_fill(len);
            let h = fill(bytemuck::cast_slice_mut(&mut v))?;
            (Elements::F64(v), h)
        }
    };
    if hasher.finalize() != crc {
        return Err(bad("CRC-32 mismatch: the archive member is corrupt".into()));
    }
    Ok(Some(NpyArray { shape: header.shape.clone(), descr: descr.clone(), elements }))
}

#[cfg(not(unix))]
fn read_stored_in_parallel(_: &Path, _: &str, _: u64, _: u64, _: u32) -> Result<Option<NpyArray>> {
    Ok(None)
}

/// Counts bytes consumed, so the data size can be checked after the header was parsed.
struct Counting<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Decodes one `.npy` stream of `total_size` bytes.
fn read_npy<R: Read>(reader: R, total_size: u64, path: &Path, name: &str) -> Result<NpyArray> {
    let mut reader = Counting { inner: reader, consumed: 0 };
    let header = read_header(&mut reader, total_size, path, name)?;
    read_npy_data(reader, header, total_size, path, name)
}

/// Parses a `.npy` header after checking its declared length against the member.
fn read_header<R: Read>(reader: &mut Counting<R>, total_size: u64, path: &Path, name: &str) -> Result<Header> {
    let bad = |problem: String| Error::bad_chunk(path, name, problem);
    // ndarray-npy allocates the header's declared length before reading it (up to 4 GiB in
    // format 2): check that length against the member first, then let it parse.
    let mut prefix = [0u8; 12];
    reader.read_exact(&mut prefix[..10]).map_err(|e| bad(format!("bad .npy header: {e}")))?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err(bad("bad .npy header: no NUMPY magic string".into()));
    }
    let (prefix_len, header_len) = match prefix[6] {
        1 => (10, u64::from(u16::from_le_bytes([prefix[8], prefix[9]]))),
        2 | 3 => {
            reader.read_exact(&mut prefix[10..12]).map_err(|e| bad(format!("bad .npy header: {e}")))?;
            (12, u64::from(u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]])))
        }
        v => return Err(bad(format!("bad .npy header: unknown format version {v}"))),
    };
    if header_len > MAX_HEADER_LEN.min(total_size.saturating_sub(prefix_len as u64)) {
        return Err(bad(format!("bad .npy header: declares a {header_len}-byte header in a {total_size}-byte member")));
    }
    Header::from_reader(&mut (&prefix[..prefix_len]).chain(reader)).map_err(|e| bad(format!("bad .npy header: {e}")))
}

fn read_npy_data<R: Read>(reader: Counting<R>, header: Header, total_size: u64, path: &Path, name: &str) -> Result<NpyArray> {
    let bad = |problem: String| Error::bad_chunk(path, name, problem);
    let descr = match &header.type_descriptor {
        PyValue::String(s) => s.clone(),
        other => return Err(bad(format!("has a structured dtype ({other}); expected a plain numeric dtype"))),
    };
    let (order, kind) = split_descr(&descr);
    let item_size: usize = match kind {
        "b1" | "i1" | "u1" => 1,
        "i2" | "u2" | "f2" => 2,
        "i4" | "u4" | "f4" => 4,
        "i8" | "u8" | "f8" => 8,
        "O" => return Err(bad("holds pickled Python objects (dtype object), which are never loaded".into())),
        _ => return Err(bad(format!("has dtype {descr}, which soft-cluster does not read"))),
    };
    let shape = header.shape.clone();
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .filter(|n| n.checked_mul(item_size).is_some_and(|b| b <= isize::MAX as usize))
        .ok_or_else(|| bad(format!("header declares an impossible shape {shape:?}")))?;
    // Checked before allocating: the header may claim more data than the member holds.
    let available = total_size.saturating_sub(reader.consumed);
    let declared = (len * item_size) as u64;
    if declared != available {
        return Err(bad(format!(
            "header declares shape {shape:?} of {descr} ({declared} bytes) but the member holds {available} bytes of data"
        )));
    }
    // The archive's size field is only a claim: a deflated stream may inflate far beyond it.
    // Read at most one byte past the declared data, so a lie costs nothing.
    let mut reader = reader.take(declared + 1);
    let canonical = PyValue::String(format!("{order}{kind}"));
    let read_error = |e: ndarray_npy::ReadDataError| bad(format!("cannot decode data: {e}"));
    let elements = match kind {
        "b1" => Elements::Bool(bool::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "i1" => Elements::I8(i8::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "u1" => Elements::U8(u8::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "i2" => Elements::I16(i16::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "u2" => Elements::U16(u16::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "i4" => Elements::I32(i32::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "u4" => Elements::U32(u32::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "i8" => Elements::I64(i64::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        "u8" => Elements::U64(u64::read_to_end_exact_vec(&mut reader, &canonical, len).map_err(read_error)?),
        // Floats (activations) go straight into place, in an array a stream may reuse.
        "f2" => Elements::F16(read_floats(&mut reader, len, order, |v: f16| f16::from_bits(v.to_bits().swap_bytes()), &bad)?),
        "f4" => Elements::F32(read_floats(&mut reader, len, order, |v: f32| f32::from_bits(v.to_bits().swap_bytes()), &bad)?),
        "f8" => Elements::F64(read_floats(&mut reader, len, order, |v: f64| f64::from_bits(v.to_bits().swap_bytes()), &bad)?),
        _ => unreachable!("kinds were filtered above"),
    };
    let elements = if header.layout.is_fortran() && shape.len() > 1 { to_c_order(elements, &shape) } else { elements };
    Ok(NpyArray { shape, descr, elements })
}

/// `len` floats in byte order `order` from `reader`, which must hold exactly that many, read
/// into an array for them (`memory::array_to_fill`); `swap` reverses one value's bytes.
fn read_floats<T: StoredDtype>(reader: &mut impl Read, len: usize, order: &str, swap: fn(T) -> T, bad: &dyn Fn(String) -> Error) -> Result<Vec<T>> {
    let mut values: Vec<T> = crate::memory::array_to_fill(len);
    reader.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(|e| bad(format!("cannot decode data: {e}")))?;
    if reader.read(&mut [0u8]).map_err(|e| bad(format!("cannot decode data: {e}")))? > 0 {
        return Err(bad("cannot decode data: the member holds more data than its header declares".into()));
    }
    if (order == ">") != cfg!(target_endian = "big") {
        values.iter_mut().for_each(|v| *v = swap(*v));
    }
    Ok(values)
}

/// Splits a numpy type string such as `<f4` into byte order (`<`, `>` or `|`) and kind (`f4`).
/// `=` (native) means little-endian on every platform we build for.
fn split_descr(descr: &str) -> (&str, &str) {
    match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') => (&descr[..1], &descr[1..]),
        Some(b'>') => (">", &descr[1..]),
        Some(b'=') => ("<", &descr[1..]),
        _ => ("<", descr),
    }
}

fn to_c_order(elements: Elements, shape: &[usize]) -> Elements {
    fn reorder<T: Clone>(v: Vec<T>, shape: &[usize]) -> Vec<T> {
        let array = ArrayD::from_shape_vec(IxDyn(shape).f(), v).expect("length was checked against the shape");
        array.iter().cloned().collect()
    }
    match elements {
        Elements::Bool(v) => Elements::Bool(reorder(v, shape)),
        Elements::I8(v) => Elements::I8(reorder(v, shape)),
        Elements::I16(v) => Elements::I16(reorder(v, shape)),
        Elements::I32(v) => Elements::I32(reorder(v, shape)),
        Elements::I64(v) => Elements::I64(reorder(v, shape)),
        Elements::U8(v) => Elements::U8(reorder(v, shape)),
        Elements::U16(v) => Elements::U16(reorder(v, shape)),
        Elements::U32(v) => Elements::U32(reorder(v, shape)),
        Elements::U64(v) => Elements::U64(reorder(v, shape)),
        Elements::F16(v) => Elements::F16(reorder(v, shape)),
        Elements::F32(v) => Elements::F32(reorder(v, shape)),
        Elements::F64(v) => Elements::F64(reorder(v, shape)),
    }
}
