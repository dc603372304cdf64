//! Chunks from Hugging Face `datasets` Arrow files (docs/formats.md "Input chunks"), as SAELens's
//! `CacheActivationsRunner` writes them with `save_to_disk`: each `data-XXXXX-of-YYYYY.arrow` (an
//! Arrow IPC stream, or an IPC file) is one chunk, each row one sequence. The activations are a
//! 2-D float column `[S, D]` per row (`Array2D`, stored as a list of lists, variable- or
//! fixed-size), chosen by name (`chunk::set_activations_key`) or as the only such column; `token_ids`
//! (a list of integers per row) and `attention_mask` are read when present. The file is memory
//! mapped and decoded in place (arrow-rs's `StreamDecoder` over the map: no copy of the record
//! batches), and read in blocks of whole rows, each copied once into its chunk.

use crate::chunk::{activations_key, Activations, Chunk};
use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use arrow_buffer::Buffer;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// The IPC file format's magic; the stream format starts with a continuation marker instead.
const FILE_MAGIC: &[u8] = b"ARROW1";

/// Checks that every buffer a message's record batch (or dictionary batch) declares lies inside
/// its `body` bytes.
fn check_message(meta: &[u8], body: u64, lie: &dyn Fn(String) -> Error) -> Result<()> {
    let message = arrow_ipc::root_as_message(meta).map_err(|e| lie(format!("bad message: {e}")))?;
    let batch = message.header_as_record_batch().or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    for buffer in batch.and_then(|b| b.buffers()).iter().flatten() {
        let (offset, length) = (u64::try_from(buffer.offset()), u64::try_from(buffer.length()));
        let (Ok(offset), Ok(length)) = (offset, length) else { return Err(lie("a buffer with a negative offset or length".into())) };
        if offset.checked_add(length).is_none_or(|end| end > body) {
            return Err(lie(format!("a buffer of {length} bytes at offset {offset} ends past its {body}-byte message body")));
        }
    }
    Ok(())
}

/// Checks every length an Arrow file declares (message metadata and body lengths, the footer
/// and its blocks) against the file's size, reading only the metadata, and returns the byte range
/// of the footer (file format) or of the messages up to and including the end-of-stream marker
/// (stream format).
fn check_lengths(map: &[u8], path: &Path, is_file_format: bool) -> Result<std::ops::Range<usize>> {
    let lie = |what: String| Error::bad_chunk(path, "(arrow)", format!("not a readable Arrow IPC file: {what}"));
    let len = map.len() as u64;
    let read_at = |at: u64, n: u64| -> Result<&[u8]> {
        match at.checked_add(n) {
            Some(end) if end <= len => Ok(&map[at as usize..end as usize]),
            _ => Err(lie(format!("declares {n} bytes at offset {at}, past the end of the {len}-byte file"))),
        }
    };
    let i32_at = |b: &[u8], at: usize| i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let (mut at, stream_end) = (0u64, len);
    if is_file_format {
        if len < 8 + 10 {
            return Err(lie("too short for the Arrow file format".into()));
        }
        let tail = read_at(len - 10, 10)?;
        let footer_len = u64::try_from(i32_at(tail, 0)).map_err(|_| lie("negative footer length".into()))?;
        let footer_at = (len - 10).checked_sub(footer_len).filter(|&f| f >= 8).ok_or_else(|| lie("footer longer than the file".into()))?;
        let footer = arrow_ipc::root_as_footer(read_at(footer_at, footer_len)?).map_err(|e| lie(format!("bad footer: {e}")))?;
        for block in footer.recordBatches().iter().flatten().chain(footer.dictionaries().iter().flatten()) {
            let (offset, meta, body) = (u64::try_from(block.offset()), u64::try_from(block.metaDataLength()), u64::try_from(block.bodyLength()));
            let (Ok(offset), Ok(meta), Ok(body)) = (offset, meta, body) else { return Err(lie("a block with a negative length".into())) };
            if offset.checked_add(meta).and_then(|e| e.checked_add(body)).is_none_or(|end| end > len) {
                return Err(lie(format!("a block of {meta} + {body} bytes at offset {offset} ends past the {len}-byte file")));
            }
            // The block's metadata: a continuation marker and a length, then the message.
            if meta >= 8 {
                check_message(read_at(offset + 8, meta - 8)?, body, &lie)?;
            }
        }
        return Ok(footer_at as usize..(footer_at + footer_len) as usize);
    }
    while at < stream_end {
        let prefix = read_at(at, 4.min(stream_end - at))?;
        if prefix.len() < 4 {
            return Err(lie("a truncated message".into()));
        }
        // A continuation marker, then the metadata length (older writers omit the marker).
        let (meta_at, meta_len) = if prefix == [0xff; 4] { (at + 8, i32_at(read_at(at + 4, 4)?, 0)) } else { (at + 4, i32_at(prefix, 0)) };
        let meta_len = u64::try_from(meta_len).map_err(|_| lie("a negative message length".into()))?;
        if meta_len == 0 {
            return Ok(0..meta_at as usize); // end of stream
        }
        let meta = read_at(meta_at, meta_len)?;
        let message = arrow_ipc::root_as_message(meta).map_err(|e| lie(format!("bad message: {e}")))?;
        let body = u64::try_from(message.bodyLength()).map_err(|_| lie("a negative body length".into()))?;
        check_message(meta, body, &lie)?;
        at = meta_at.checked_add(meta_len).and_then(|e| e.checked_add(body)).filter(|&end| end <= stream_end).ok_or_else(|| lie(format!("a message body of {body} bytes ends past the {stream_end}-byte stream")))?;
    }
    Ok(0..stream_end as usize)
}

/// The schema and record batches of an Arrow file, stream or file format, decoded in place from
/// a memory map of the file: the batches' arrays point into the map (nothing is copied or
/// allocated by a length the file declares; the pages are read when a block copies them).
fn batches(path: &Path) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: as for safetensors shards (safetensors_chunk.rs): a file changed while mapped gives
    // wrong numbers, as any reader would see, and every access below is bounds-checked.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let is_file_format = map.starts_with(FILE_MAGIC);
    let range = check_lengths(&map, path, is_file_format)?;
    let corrupt = |e: arrow_schema::ArrowError| Error::bad_chunk(path, "(arrow)", format!("corrupt record batch: {e}"));
    let no_schema = || Error::bad_chunk(path, "(arrow)", "not a readable Arrow IPC file: no schema");
    let footer_bytes = if is_file_format { map[range.clone()].to_vec() } else { Vec::new() };
    let mut buffer = Buffer::from(bytes::Bytes::from_owner(map));
    let mut batches = Vec::new();
    if is_file_format {
        // The footer holds the schema and where each block lies (writers pad the magic to
        // different lengths, so the messages are found from the footer, as arrow-rs does).
        let footer = arrow_ipc::root_as_footer(&footer_bytes).expect("checked by check_lengths");
        let schema = Arc::new(arrow_ipc::convert::fb_to_schema(footer.schema().ok_or_else(no_schema)?));
        let mut decoder = arrow_ipc::reader::FileDecoder::new(schema.clone(), footer.version());
        let block_bytes = |b: &arrow_ipc::Block| buffer.slice_with_length(b.offset() as usize, b.metaDataLength() as usize + b.bodyLength() as usize);
        for block in footer.dictionaries().iter().flatten() {
            decoder.read_dictionary(block, &block_bytes(block)).map_err(corrupt)?;
        }
        for block in footer.recordBatches().iter().flatten() {
            batches.extend(decoder.read_record_batch(block, &block_bytes(block)).map_err(corrupt)?);
        }
        return Ok((schema, batches));
    }
    buffer = buffer.slice_with_length(range.start, range.len());
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer).map_err(corrupt)? {
            batches.push(batch);
        }
    }
    decoder.finish().map_err(corrupt)?;
    Ok((decoder.schema().ok_or_else(no_schema)?, batches))
}

/// Whether a column type is a list of lists of floats (a 2-D float feature).
fn is_float_2d(t: &DataType) -> bool {
    let inner = |t: &DataType| match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => Some(f.data_type().clone()),
        _ => None,
    };
    inner(t).and_then(|t| inner(&t)).is_some_and(|t| matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64))
}

/// The activations column: the key set, else the only 2-D float column.
fn choose_column(schema: &Schema, path: &Path) -> Result<String> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(key) = activations_key() {
        return if names.contains(&key.as_str()) { Ok(key) } else { Err(Error::bad_chunk(path, &key, format!("missing (the columns are {})", names.join(", ")))) };
    }
    let floats: Vec<&str> = schema.fields().iter().filter(|f| is_float_2d(f.data_type())).map(|f| f.name().as_str()).collect();
    match floats[..] {
        [one] => Ok(one.to_string()),
        [] => Err(Error::bad_chunk(path, "activations", format!("no 2-D float column (list of lists of floats) among the columns {}", names.join(", ")))),
        _ => Err(Error::bad_chunk(path, "activations", format!("several 2-D float columns could be the activations ({}); choose one with --key NAME (activationsKey)", floats.join(", ")))),
    }
}

/// Offsets (`n + 1`) of a list-like array's rows into its child array, and the child.
fn list_parts(array: &dyn Array) -> Option<(Vec<usize>, ArrayRef)> {
    if let Some(a) = array.as_list_opt::<i32>() {
        Some((a.value_offsets().iter().map(|&o| o as usize).collect(), a.values().clone()))
    } else if let Some(a) = array.as_list_opt::<i64>() {
        Some((a.value_offsets().iter().map(|&o| o as usize).collect(), a.values().clone()))
    } else if let Some(a) = array.as_fixed_size_list_opt() {
        let size = a.value_length() as usize;
        let start = a.offset();
        // The child of a sliced fixed-size list is not sliced: rows start at `offset * size`.
        Some(((0..=a.len()).map(|i| (start + i) * size).collect(), a.values().clone()))
    } else {
        None
    }
}

/// Copies the rows of a 2-D column (`S` lists of `D` values each) into `out` from `*at` on, and
/// moves `*at` past them.
fn append_2d<T: Copy + Send + Sync>(column: &dyn Array, values: &[T], seq_len_dim: &mut Option<(usize, usize)>, out: &mut [T], at: &mut usize, where_: &dyn Fn(String) -> Error) -> Result<()> {
    let (outer, inner) = list_parts(column).ok_or_else(|| where_("is not a list of lists".into()))?;
    let (inner_offsets, _) = list_parts(inner.as_ref()).ok_or_else(|| where_("is not a list of lists".into()))?;
    for r in 0..column.len() {
        if column.is_null(r) {
            return Err(where_(format!("row {r} is null")));
        }
        let seqs = outer[r]..outer[r + 1];
        if r > 0 && seqs.start != outer[r - 1] + seq_len_dim.map_or(0, |(s, _)| s) {
            return Err(where_(format!("row {r} does not follow the row before it")));
        }
        let s = seqs.len();
        let d = seqs.clone().next().map_or(0, |j| inner_offsets[j + 1] - inner_offsets[j]);
        let (s0, d0) = *seq_len_dim.get_or_insert((s, d));
        if (s, d) != (s0, d0) || seqs.clone().any(|j| inner_offsets[j + 1] - inner_offsets[j] != d0) {
            return Err(where_(format!("row {r} is not [{s0}, {d0}] like the first row (every sequence must have the same length and D)")));
        }
    }
    // Every row checked: the rows' values are one contiguous run of the leaf array.
    if column.len() > 0 {
        let (s, d) = seq_len_dim.expect("set by the first row");
        let span = inner_offsets[outer[0]]..inner_offsets[outer[column.len()]];
        if span.len() != column.len() * s * d || span.end > values.len() || *at + span.len() > out.len() {
            return Err(where_(format!("its values ({}) are not the rows' {} x {s} x {d}", span.len(), column.len())));
        }
        crate::memory::copy_values(&mut out[*at..*at + span.len()], &values[span.clone()]);
        *at += span.len();
    }
    Ok(())
}

/// The float values under a list of lists (nulls refused).
fn leaf(column: &dyn Array) -> Option<ArrayRef> {
    let (_, inner) = list_parts(column)?;
    let (_, leaf) = list_parts(inner.as_ref())?;
    Some(leaf)
}

/// The per-token integers of a list column, `S` per row, widened to int64.
fn append_ints(column: &dyn Array, seq_len: usize, out: &mut Vec<i64>, where_: &dyn Fn(String) -> Error) -> Result<()> {
    let (offsets, values) = list_parts(column).ok_or_else(|| where_("is not a list per row".into()))?;
    let ints: Vec<i64> = match values.data_type() {
        DataType::Int8 => values.as_primitive::<Int8Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::Int16 => values.as_primitive::<Int16Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::Int32 => values.as_primitive::<Int32Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::Int64 => values.as_primitive::<Int64Type>().values().to_vec(),
        DataType::UInt8 => values.as_primitive::<UInt8Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::UInt16 => values.as_primitive::<UInt16Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::UInt32 => values.as_primitive::<UInt32Type>().values().iter().map(|&v| i64::from(v)).collect(),
        DataType::Boolean => {
            let b = values.as_boolean();
            (0..b.len()).map(|i| i64::from(b.value(i))).collect()
        }
        other => return Err(where_(format!("has items of type {other}; expected integers"))),
    };
    for r in 0..column.len() {
        let span = offsets[r]..offsets[r + 1];
        if column.is_null(r) || span.len() != seq_len {
            return Err(where_(format!("row {r} holds {} values; expected {seq_len}, one per position", span.len())));
        }
        out.extend_from_slice(&ints[span]);
    }
    Ok(())
}

thread_local! {
    /// Set while arrow-rs runs under `guarded`: its panics are errors there, not crashes.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `read` so that a panic inside arrow-rs (its IPC reader unwraps on some malformed
/// metadata, as fuzzing found) becomes `ERR_BAD_CHUNK` naming the file, and prints nothing:
/// the panic hook stays silent for these panics and prints every other as before.
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    GUARDED.with(|g| g.set(was));
    outcome.unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(Error::bad_chunk(path, "(arrow)", format!("corrupt Arrow data (the Arrow reader failed: {})", why.lines().next().unwrap_or("unknown"))))
    })
}

/// An Arrow chunk decoded in place: its record batches, the activations column, `(S, D)` of its
/// first row and its rows.
struct ArrowFile {
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
    key: String,
    seq_len: usize,
    d_model: usize,
    rows: usize,
}

fn open(path: &Path) -> Result<ArrowFile> {
    let (schema, batches) = batches(path)?;
    let key = choose_column(&schema, path)?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let first = batches.iter().map(|b| b.column_by_name(&key).expect("chosen from the schema")).find(|c| !c.is_empty());
    let (mut seq_len, mut d_model) = (0, 0);
    if let Some(column) = first {
        let (outer, inner) = list_parts(column.as_ref()).ok_or_else(|| Error::bad_chunk(path, &key, "is not a list of lists"))?;
        let (inner_offsets, _) = list_parts(inner.as_ref()).ok_or_else(|| Error::bad_chunk(path, &key, "is not a list of lists"))?;
        seq_len = outer[1] - outer[0];
        d_model = if seq_len > 0 { inner_offsets[outer[0] + 1] - inner_offsets[outer[0]] } else { 0 };
    }
    if d_model == 0 {
        return Err(Error::bad_chunk(path, &key, "has D = 0 (no features), or no rows"));
    }
    Ok(ArrowFile { schema, batches, key, seq_len, d_model, rows })
}

/// `(B, S, D)` of an Arrow chunk: its rows, and the first row's shape.
pub fn arrow_chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    guarded(path, || open(path).map(|f| (f.rows, f.seq_len, f.d_model)))
}

/// Reads and checks one Arrow chunk, whole.
pub fn read_arrow_chunk(path: &Path) -> Result<Chunk> {
    arrow_blocks(path, usize::MAX)?.next().expect("at least one block")
}

/// The Arrow chunk in blocks of whole rows (sequences) of at most `block_bytes` of activations
/// (at least one row): a shard larger than memory is never read whole.
pub fn arrow_blocks(path: &Path, block_bytes: usize) -> Result<Box<dyn Iterator<Item = Result<Chunk>> + Send>> {
    let file = Arc::new(guarded(path, || open(path))?);
    let element = file.batches.iter().find_map(|b| leaf(b.column_by_name(&file.key).expect("in the schema").as_ref())).map_or(4, |l| l.data_type().primitive_width().unwrap_or(4));
    let rows_per_block = (block_bytes / (file.seq_len * file.d_model * element).max(1)).max(1);
    let path = path.to_path_buf();
    Ok(Box::new((0..file.rows).step_by(rows_per_block).map(move |first_row| {
        let rows = rows_per_block.min(file.rows - first_row);
        guarded(&path, || read_block(&path, &file, first_row, rows))
    })))
}

/// Rows `first_row..first_row + rows` of the file's record batches (slices of them, no copy).
fn block_batches(file: &ArrowFile, first_row: usize, rows: usize) -> Vec<(usize, RecordBatch)> {
    let (mut start, mut out) = (0usize, Vec::new());
    for batch in &file.batches {
        let (from, to) = (first_row.max(start), (first_row + rows).min(start + batch.num_rows()));
        if from < to {
            out.push((from, batch.slice(from - start, to - from)));
        }
        start += batch.num_rows();
    }
    out
}

/// One block, its activations copied once into an array of its exact size (a reused one when
/// streaming).
fn read_block(path: &Path, file: &ArrowFile, first_row: usize, rows: usize) -> Result<Chunk> {
    let (key, seq_len, d_model) = (&file.key, file.seq_len, file.d_model);
    let has = |name: &str| file.schema.fields().iter().any(|f| f.name() == name);
    let (has_ids, has_mask) = (has("token_ids"), has("attention_mask"));
    let values = rows * seq_len * d_model;
    let mut shape = Some((seq_len, d_model));
    let mut activations: Option<Activations> = None;
    let mut filled = 0usize;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (at_row, batch) in block_batches(file, first_row, rows) {
        let at = |name: &str| {
            let (path, name) = (path.to_path_buf(), name.to_string());
            move |problem: String| Error::bad_chunk(&path, &name, problem.replacen("row ", &format!("row {at_row}+"), 1))
        };
        let column = batch.column_by_name(key).expect("chosen from the schema");
        let leaf = leaf(column.as_ref()).ok_or_else(|| Error::bad_chunk(path, key, "is not a list of lists"))?;
        if leaf.null_count() > 0 {
            return Err(Error::bad_chunk(path, key, "holds null values"));
        }
        let where_ = at(key);
        if activations.is_none() {
            let element = leaf.data_type().primitive_width().unwrap_or(0);
            crate::memory::check_array_bytes(path, key, (values * element) as u64)?;
            activations = match leaf.data_type() {
                // A spare buffer of an earlier chunk when there is one (`memory::array_to_fill`):
                // every value is overwritten, or the block is refused below.
                DataType::Float32 => Some(Activations::F32(crate::memory::array_to_fill(values))),
                DataType::Float16 => Some(Activations::F16(crate::memory::array_to_fill(values))),
                DataType::Float64 => Some(Activations::F64(crate::memory::array_to_fill(values))),
                _ => None,
            };
        }
        match (leaf.data_type(), activations.as_mut()) {
            (DataType::Float32, Some(Activations::F32(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float32Type>().values(), &mut shape, out, &mut filled, &where_)?,
            (DataType::Float16, Some(Activations::F16(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float16Type>().values(), &mut shape, out, &mut filled, &where_)?,
            (DataType::Float64, Some(Activations::F64(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float64Type>().values(), &mut shape, out, &mut filled, &where_)?,
            (other, _) => return Err(Error::bad_chunk(path, key, format!("has values of type {other} (or changes type between record batches); expected float16, float32 or float64"))),
        }
        if has_ids {
            append_ints(batch.column_by_name("token_ids").expect("in the schema").as_ref(), seq_len, &mut ids, &at("token_ids"))?;
        }
        if has_mask {
            append_ints(batch.column_by_name("attention_mask").expect("in the schema").as_ref(), seq_len, &mut mask, &at("attention_mask"))?;
        }
    }
    let activations = activations.ok_or_else(|| Error::bad_chunk(path, key, "has no rows"))?;
    if filled != values {
        return Err(Error::bad_chunk(path, key, format!("holds {filled} values in rows {first_row}..{}, not {rows} x {seq_len} x {d_model}", first_row + rows)));
    }
    Chunk {
        source: path.display().to_string(),
        batch: rows,
        first_row,
        file_batch: file.rows,
        seq_len,
        d_model,
        activations,
        attention_mask: has_mask.then(|| mask.into_iter().map(|v| u8::from(v != 0)).collect()),
        token_ids: has_ids.then_some(ids),
    }
    .finished()
}
