//! Chunks from Hugging Face `datasets` Arrow files (docs/formats.md "Input chunks"), as SAELens's
//! `CacheActivationsRunner` writes them with `save_to_disk`: each `data-XXXXX-of-YYYYY.arrow` (an
//! Arrow IPC stream, or an IPC file) is one chunk, each row one sequence. The activations are a
//! 2-D float column `[S, D]` per row (`Array2D`, stored as a list of lists, variable- or
//! fixed-size), chosen by name (`chunk::set_activations_key`) or as the only such column; `token_ids`
//! (a list of integers per row) and `attention_mask` are read when present. Record batches are
//! decoded one at a time.

use crate::chunk::{activations_key, Activations, Chunk};
use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
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
/// and its blocks) against the file's size, reading only the metadata: arrow-rs allocates a
/// declared body before it reads it, so a lying length must be refused first.
fn check_lengths(file: &mut File, path: &Path, is_file_format: bool) -> Result<()> {
    let lie = |what: String| Error::bad_chunk(path, "(arrow)", format!("not a readable Arrow IPC file: {what}"));
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut read_at = |at: u64, n: u64| -> Result<Vec<u8>> {
        if at.checked_add(n).is_none_or(|end| end > len) {
            return Err(lie(format!("declares {n} bytes at offset {at}, past the end of the {len}-byte file")));
        }
        let mut buf = vec![0u8; n as usize];
        file.seek(SeekFrom::Start(at)).and_then(|_| file.read_exact(&mut buf)).map_err(|e| Error::io(path, e))?;
        Ok(buf)
    };
    let i32_at = |b: &[u8], at: usize| i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    if is_file_format {
        if len < 8 + 10 {
            return Err(lie("too short for the Arrow file format".into()));
        }
        let tail = read_at(len - 10, 10)?;
        let footer_len = u64::try_from(i32_at(&tail, 0)).map_err(|_| lie("negative footer length".into()))?;
        let footer_bytes = read_at((len - 10).checked_sub(footer_len).ok_or_else(|| lie("footer longer than the file".into()))?, footer_len)?;
        let footer = arrow_ipc::root_as_footer(&footer_bytes).map_err(|e| lie(format!("bad footer: {e}")))?;
        for block in footer.recordBatches().iter().flatten().chain(footer.dictionaries().iter().flatten()) {
            let (offset, meta, body) = (u64::try_from(block.offset()), u64::try_from(block.metaDataLength()), u64::try_from(block.bodyLength()));
            let (Ok(offset), Ok(meta), Ok(body)) = (offset, meta, body) else { return Err(lie("a block with a negative length".into())) };
            if offset.checked_add(meta).and_then(|e| e.checked_add(body)).is_none_or(|end| end > len) {
                return Err(lie(format!("a block of {meta} + {body} bytes at offset {offset} ends past the {len}-byte file")));
            }
            // The block's metadata: a continuation marker and a length, then the message.
            if meta >= 8 {
                check_message(&read_at(offset + 8, meta - 8)?, body, &lie)?;
            }
        }
        return Ok(());
    }
    let mut at = 0u64;
    while at < len {
        let prefix = read_at(at, 4.min(len - at))?;
        if prefix.len() < 4 {
            return Err(lie("a truncated message".into()));
        }
        // A continuation marker, then the metadata length (older writers omit the marker).
        let (meta_at, meta_len) = if prefix == [0xff; 4] { (at + 8, i32_at(&read_at(at + 4, 4)?, 0)) } else { (at + 4, i32_at(&prefix, 0)) };
        let meta_len = u64::try_from(meta_len).map_err(|_| lie("a negative message length".into()))?;
        if meta_len == 0 {
            return Ok(()); // end of stream
        }
        let meta = read_at(meta_at, meta_len)?;
        let message = arrow_ipc::root_as_message(&meta).map_err(|e| lie(format!("bad message: {e}")))?;
        let body = u64::try_from(message.bodyLength()).map_err(|_| lie("a negative body length".into()))?;
        check_message(&meta, body, &lie)?;
        at = meta_at.checked_add(meta_len).and_then(|e| e.checked_add(body)).filter(|&end| end <= len).ok_or_else(|| lie(format!("a message body of {body} bytes ends past the {len}-byte file")))?;
    }
    Ok(())
}

/// Record batches of an Arrow file, stream or file format.
fn batches(path: &Path) -> Result<(Arc<Schema>, Box<dyn Iterator<Item = Result<RecordBatch>>>)> {
    let bad = |e: arrow_schema::ArrowError| Error::bad_chunk(path, "(arrow)", format!("not a readable Arrow IPC file: {e}"));
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    check_lengths(&mut file, path, n == 6 && magic == FILE_MAGIC)?;
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let source = path.to_path_buf();
    let wrap = move |r: std::result::Result<RecordBatch, arrow_schema::ArrowError>| r.map_err(|e| Error::bad_chunk(&source, "(arrow)", format!("corrupt record batch: {e}")));
    if n == 6 && magic == FILE_MAGIC {
        let reader = arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None).map_err(bad)?;
        Ok((reader.schema(), Box::new(reader.map(wrap))))
    } else {
        let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None).map_err(bad)?;
        Ok((reader.schema(), Box::new(reader.map(wrap))))
    }
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

/// Appends the rows of a 2-D column (`S` lists of `D` values each) to `out`; returns `(S, D)`.
fn append_2d<T: Copy>(column: &dyn Array, values: &[T], seq_len_dim: &mut Option<(usize, usize)>, out: &mut Vec<T>, where_: &dyn Fn(String) -> Error) -> Result<()> {
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
        if span.len() != column.len() * s * d || span.end > values.len() {
            return Err(where_(format!("its values ({}) are not the rows' {} x {s} x {d}", span.len(), column.len())));
        }
        out.extend_from_slice(&values[span]);
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

/// `(B, S, D)` of an Arrow chunk: its rows, and the first row's shape.
pub fn arrow_chunk_shape(path: &Path) -> Result<(usize, usize, usize)> {
    guarded(path, || arrow_chunk_shape_unguarded(path))
}

fn arrow_chunk_shape_unguarded(path: &Path) -> Result<(usize, usize, usize)> {
    let (schema, batches) = batches(path)?;
    let key = choose_column(&schema, path)?;
    let (mut rows, mut shape) = (0usize, None);
    for batch in batches {
        let batch = batch?;
        let column = batch.column_by_name(&key).expect("chosen from the schema");
        if shape.is_none() && column.len() > 0 {
            let (outer, inner) = list_parts(column.as_ref()).ok_or_else(|| Error::bad_chunk(path, &key, "is not a list of lists"))?;
            let (inner_offsets, _) = list_parts(inner.as_ref()).ok_or_else(|| Error::bad_chunk(path, &key, "is not a list of lists"))?;
            let s = outer[1] - outer[0];
            let d = if s > 0 { inner_offsets[outer[0] + 1] - inner_offsets[outer[0]] } else { 0 };
            shape = Some((s, d));
        }
        rows += batch.num_rows();
    }
    let (s, d) = shape.unwrap_or((0, 0));
    if d == 0 {
        return Err(Error::bad_chunk(path, &key, "has D = 0 (no features), or no rows"));
    }
    Ok((rows, s, d))
}

/// Reads and checks one Arrow chunk.
pub fn read_arrow_chunk(path: &Path) -> Result<Chunk> {
    guarded(path, || read_arrow_chunk_unguarded(path))
}

fn read_arrow_chunk_unguarded(path: &Path) -> Result<Chunk> {
    let (schema, batches) = batches(path)?;
    let key = choose_column(&schema, path)?;
    let has = |name: &str| schema.fields().iter().any(|f| f.name() == name);
    let (has_ids, has_mask) = (has("token_ids"), has("attention_mask"));
    let mut shape: Option<(usize, usize)> = None;
    let mut activations: Option<Activations> = None;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    let mut rows = 0usize;
    for batch in batches {
        let batch = batch?;
        let at = |name: &str| {
            let (path, name, first) = (path.to_path_buf(), name.to_string(), rows);
            move |problem: String| Error::bad_chunk(&path, &name, problem.replacen("row ", &format!("row {}+", first), 1))
        };
        let column = batch.column_by_name(&key).expect("chosen from the schema");
        let leaf = leaf(column.as_ref()).ok_or_else(|| Error::bad_chunk(path, &key, "is not a list of lists"))?;
        if leaf.null_count() > 0 {
            return Err(Error::bad_chunk(path, &key, "holds null values"));
        }
        let where_ = at(&key);
        match (leaf.data_type(), &mut activations) {
            (DataType::Float32, None) => activations = Some(Activations::F32(Vec::new())),
            (DataType::Float16, None) => activations = Some(Activations::F16(Vec::new())),
            (DataType::Float64, None) => activations = Some(Activations::F64(Vec::new())),
            _ => {}
        }
        match (leaf.data_type(), activations.as_mut()) {
            (DataType::Float32, Some(Activations::F32(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float32Type>().values(), &mut shape, out, &where_)?,
            (DataType::Float16, Some(Activations::F16(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float16Type>().values(), &mut shape, out, &where_)?,
            (DataType::Float64, Some(Activations::F64(out))) => append_2d(column.as_ref(), leaf.as_primitive::<Float64Type>().values(), &mut shape, out, &where_)?,
            (other, _) => return Err(Error::bad_chunk(path, &key, format!("has values of type {other} (or changes type between record batches); expected float16, float32 or float64"))),
        }
        crate::memory::check_array_bytes(path, &key, activations.as_ref().map_or(0, |a| a.len() * a.element_bytes()) as u64)?;
        let seq_len = shape.map_or(0, |(s, _)| s);
        if has_ids {
            append_ints(batch.column_by_name("token_ids").expect("in the schema").as_ref(), seq_len, &mut ids, &at("token_ids"))?;
        }
        if has_mask {
            append_ints(batch.column_by_name("attention_mask").expect("in the schema").as_ref(), seq_len, &mut mask, &at("attention_mask"))?;
        }
        rows += batch.num_rows();
    }
    let (seq_len, d_model) = shape.ok_or_else(|| Error::bad_chunk(path, &key, "has no rows"))?;
    if d_model == 0 {
        return Err(Error::bad_chunk(path, &key, "has D = 0 (no features)"));
    }
    let activations = activations.expect("set with the shape");
    Chunk {
        source: path.display().to_string(),
        batch: rows,
        first_row: 0,
        file_batch: rows,
        seq_len,
        d_model,
        activations,
        attention_mask: has_mask.then(|| mask.into_iter().map(|v| u8::from(v != 0)).collect()),
        token_ids: has_ids.then_some(ids),
    }
    .finished()
}
