//! Issue 14: chunks stored as safetensors (bfloat16, float16, float32, float64) and `.npy` give
//! the fit and the memberships of the same activations stored as `.npz`; their bad inputs are
//! one-line errors naming the file.

mod common;
use common::*;
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use soft_cluster_core::fit::{fit_chunks, FitRequest};
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::sources::chunk_shape;
use soft_cluster_core::{read_chunk, ClusteringConfig, Model, Temperature};
use std::path::{Path, PathBuf};

const B: usize = 3;
const S: usize = 40;
const D: usize = 16;

/// Activations with structure (3 planted directions), padding at the ends, and token ids.
fn data() -> (Vec<f32>, Vec<u8>, Vec<i64>) {
    let truth = unit_rows(3, D, 5);
    let noise = unit_rows(B * S, D, 6);
    let (truth, noise) = (&truth, &noise);
    let acts = (0..B * S).flat_map(|t| (0..D).map(move |j| (1.0 + (t % 7) as f32) * (truth[(t % 3) * D + j] + 0.3 * noise[t * D + j]))).collect::<Vec<_>>();
    let mask = (0..B * S).map(|t| u8::from(t % S < S - 5)).collect();
    let ids = (0..B * S).map(|t| (t * 13 % 500) as i64).collect();
    (acts, mask, ids)
}

fn bytes<T: Copy, const N: usize>(values: &[T], to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_le(v)).collect()
}

/// A safetensors chunk holding `acts` (already in `dtype`'s bytes), the mask and the ids.
fn write_safetensors(path: &Path, key: &str, dtype: Dtype, acts: &[u8], mask: Option<&[u8]>, ids: Option<&[i64]>) {
    let ids_bytes = ids.map(|ids| bytes(ids, i64::to_le_bytes));
    let mut tensors = vec![(key.to_string(), TensorView::new(dtype, vec![B, S, D], acts).unwrap())];
    if let Some(m) = mask {
        tensors.push(("attention_mask".into(), TensorView::new(Dtype::BOOL, vec![B, S], m).unwrap()));
    }
    if let Some(ids) = &ids_bytes {
        tensors.push(("token_ids".into(), TensorView::new(Dtype::I64, vec![B, S], ids).unwrap()));
    }
    std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
}

fn fit(chunk: &Path, out: &Path) -> Model {
    let mut config = ClusteringConfig::new(3, D);
    config.temperature = Temperature::Fixed(0.1);
    config.n_iterations = 5;
    fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &[chunk.to_path_buf()], output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap()
}

fn same_fit(label: &str, a: &Model, b: &Model, a_dir: &Path, b_dir: &Path, a_name: &str, b_name: &str) {
    let worst = a.centers.data.iter().zip(&b.centers.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{label}: centers differ by {worst}");
    let (ia, va) = (read_npz_i64(&a_dir.join(a_name), "indices").1, read_npz_f32(&a_dir.join(a_name), "values").1);
    let (ib, vb) = (read_npz_i64(&b_dir.join(b_name), "indices").1, read_npz_f32(&b_dir.join(b_name), "values").1);
    assert_eq!(ia, ib, "{label}: the same nonzero memberships");
    let worst = va.iter().zip(&vb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{label}: memberships differ by {worst}");
    assert_eq!(a.exemplars.iter().flatten().map(|e| e.tokens.clone()).collect::<Vec<_>>(), b.exemplars.iter().flatten().map(|e| e.tokens.clone()).collect::<Vec<_>>(), "{label}: exemplar token ids");
}

#[test]
fn safetensors_and_npy_chunks_fit_like_their_npz_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, mask, ids) = data();
    let npz = dir.path().join("ref.npz");
    write_chunk(&npz, B, S, D, &acts, Some(&mask), Some(&ids));
    let reference = fit(&npz, &dir.path().join("out_ref"));

    let f64s: Vec<f64> = acts.iter().map(|&v| f64::from(v)).collect();
    for (label, dtype, raw) in [("f32", Dtype::F32, bytes(&acts, f32::to_le_bytes)), ("f64", Dtype::F64, bytes(&f64s, f64::to_le_bytes))] {
        let path = dir.path().join(format!("{label}.safetensors"));
        write_safetensors(&path, "activations", dtype, &raw, Some(&mask), Some(&ids));
        assert_eq!(chunk_shape(&path).unwrap(), (B, S, D));
        let out = dir.path().join(format!("out_{label}"));
        let model = fit(&path, &out);
        same_fit(label, &reference, &model, &dir.path().join("out_ref"), &out, "ref.memberships.npz", &format!("{label}.memberships.npz"));
    }

    // 16-bit floats: the same as a float32 file holding the same rounded values.
    let halves: Vec<f16> = acts.iter().map(|&v| f16::from_f32(v)).collect();
    let brains: Vec<bf16> = acts.iter().map(|&v| bf16::from_f32(v)).collect();
    for (label, dtype, raw, widened) in [
        ("f16", Dtype::F16, bytes(&halves, f16::to_le_bytes), halves.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
        ("bf16", Dtype::BF16, bytes(&brains, bf16::to_le_bytes), brains.iter().map(|v| v.to_f32()).collect::<Vec<_>>()),
    ] {
        let rounded = dir.path().join(format!("{label}_rounded.npz"));
        write_chunk(&rounded, B, S, D, &widened, Some(&mask), Some(&ids));
        let want = fit(&rounded, &dir.path().join(format!("out_{label}_rounded")));
        let path = dir.path().join(format!("{label}.safetensors"));
        write_safetensors(&path, "activations", dtype, &raw, Some(&mask), Some(&ids));
        assert_eq!(read_chunk(&path).unwrap().activations.dtype(), if label == "bf16" { "bfloat16" } else { "float16" });
        let out = dir.path().join(format!("out_{label}"));
        let model = fit(&path, &out);
        same_fit(label, &want, &model, &dir.path().join(format!("out_{label}_rounded")), &out, &format!("{label}_rounded.memberships.npz"), &format!("{label}.memberships.npz"));
    }

    // Another tensor name is found when it is the only float tensor; an extensionless file by its bytes.
    let other = dir.path().join("hook_resid_post");
    write_safetensors(&other, "blocks.3.hook_resid_post", Dtype::F32, &bytes(&acts, f32::to_le_bytes), Some(&mask), Some(&ids));
    let model = fit(&other, &dir.path().join("out_other"));
    same_fit("other key", &reference, &model, &dir.path().join("out_ref"), &dir.path().join("out_other"), "ref.memberships.npz", "hook_resid_post.memberships.npz");

    // .npy: activations only (every token real).
    let all_real = dir.path().join("all_real.npz");
    write_chunk(&all_real, B, S, D, &acts, None, None);
    let want = fit(&all_real, &dir.path().join("out_all_real"));
    let npy = dir.path().join("acts.npy");
    std::fs::write(&npy, npy_bytes("<f4", false, &[B, S, D], &bytes(&acts, f32::to_le_bytes))).unwrap();
    let model = fit(&npy, &dir.path().join("out_npy"));
    same_fit("npy", &want, &model, &dir.path().join("out_all_real"), &dir.path().join("out_npy"), "all_real.memberships.npz", "acts.memberships.npz");
}

fn refused(path: &PathBuf) -> String {
    let err = read_chunk(path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "names the file: {text}");
    assert!(!text.contains('\n'), "one line: {text}");
    format!("{} {text}", err.code())
}

#[test]
fn bad_safetensors_and_npy_chunks_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, mask, ids) = data();
    let good = dir.path().join("good.safetensors");
    write_safetensors(&good, "activations", Dtype::F32, &bytes(&acts, f32::to_le_bytes), Some(&mask), Some(&ids));
    let whole = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &whole[..whole.len() - 100]).unwrap();
    assert!(refused(&truncated).contains("ERR_BAD_CHUNK"), "{}", refused(&truncated));

    let lying = dir.path().join("lying.safetensors");
    let mut bytes_ = whole.clone();
    bytes_[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&lying, bytes_).unwrap();
    assert!(refused(&lying).contains("not a readable safetensors file"));

    let wrong_key = dir.path().join("two.safetensors");
    let a = bytes(&acts, f32::to_le_bytes);
    let tensors = vec![("x", TensorView::new(Dtype::F32, vec![B, S, D], &a).unwrap()), ("y", TensorView::new(Dtype::F32, vec![B, S, D], &a).unwrap())];
    std::fs::write(&wrong_key, safetensors::serialize(tensors, None).unwrap()).unwrap();
    assert!(refused(&wrong_key).contains("several float tensors could be the activations (x, y); choose one with --key NAME"));

    let bad_mask = dir.path().join("bad_mask.safetensors");
    let m = vec![1u8; B * (S - 1)];
    let tensors = vec![("activations", TensorView::new(Dtype::F32, vec![B, S, D], &a).unwrap()), ("attention_mask", TensorView::new(Dtype::BOOL, vec![B, S - 1], &m).unwrap())];
    std::fs::write(&bad_mask, safetensors::serialize(tensors, None).unwrap()).unwrap();
    assert!(refused(&bad_mask).contains("attention_mask: has shape [3, 39]; expected [B, S] = [3, 40]"));

    // NaN in bfloat16 at a real token: named by batch and position when the fit reads it.
    let mut brains: Vec<bf16> = acts.iter().map(|&v| bf16::from_f32(v)).collect();
    brains[(S + 2) * D + 4] = bf16::NAN;
    let nan = dir.path().join("nan.safetensors");
    write_safetensors(&nan, "activations", Dtype::BF16, &bytes(&brains, bf16::to_le_bytes), Some(&mask), None);
    let mut config = ClusteringConfig::new(3, D);
    config.temperature = Temperature::Fixed(0.1);
    let err = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &[nan.clone()], output_dir: &dir.path().join("o"), resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: batch 1, position 2: activation vector holds NaN or Inf", nan.display()));
    assert!(!dir.path().join("o").exists(), "nothing written");

    // D differs across shards: the second is named.
    let narrow = dir.path().join("narrow.safetensors");
    let tensors = vec![("activations", TensorView::new(Dtype::F32, vec![B * S, D / 2], &a[..B * S * D / 2 * 4]).unwrap())];
    std::fs::write(&narrow, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let err = fit_chunks(FitRequest { config: &config, initial_centers: None, chunks: &[good.clone(), narrow.clone()], output_dir: &dir.path().join("o2"), resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess }, &CpuBackend::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().starts_with(&format!("{}: activations: D = 8 but the model's dModel is 16", narrow.display())), "{err}");

    // Pickles are never loaded; say how to convert.
    let pt = dir.path().join("acts.pt");
    std::fs::write(&pt, b"PK\x03\x04 pretend torch zip").unwrap();
    assert!(refused(&pt).contains("pickled PyTorch or Python file, which soft-cluster never loads") && refused(&pt).contains("safetensors.torch import save_file"));
    // bfloat16 through numpy (a 2-byte void dtype) is ambiguous: refused, pointing to safetensors.
    let void = dir.path().join("void.npy");
    std::fs::write(&void, npy_bytes("|V2", false, &[S, D], &vec![0u8; S * D * 2])).unwrap();
    assert!(refused(&void).contains("2-byte void: bfloat16 saved through numpy"));
    // Neither format.
    let junk = dir.path().join("junk.dat");
    std::fs::write(&junk, b"hello world, not a chunk").unwrap();
    assert!(refused(&junk).contains("is not a chunk file: neither .npz, .safetensors, .npy nor .arrow"));
}

mod arrow {
    use super::*;
    use arrow_array::builder::{FixedSizeListBuilder, Float16Builder, Float32Builder, Int32Builder, ListBuilder};
    use arrow_array::{ArrayRef, RecordBatch};
    use std::sync::Arc;

    /// `rows` sequences of the test data as a variable-size list<list<float32>> column (how
    /// `datasets` stores Array2D) and a fixed-size list of int32 token ids.
    fn batch(acts: &[f32], ids: &[i64], rows: std::ops::Range<usize>) -> RecordBatch {
        let mut column = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
        let mut tokens = FixedSizeListBuilder::new(Int32Builder::new(), S as i32);
        for b in rows {
            for s in 0..S {
                let t = b * S + s;
                column.values().values().append_slice(&acts[t * D..(t + 1) * D]);
                column.values().append(true);
                tokens.values().append_value(ids[t] as i32);
            }
            column.append(true);
            tokens.append(true);
        }
        RecordBatch::try_from_iter([("blocks.3.hook_resid_post", Arc::new(column.finish()) as ArrayRef), ("token_ids", Arc::new(tokens.finish()) as ArrayRef)]).unwrap()
    }

    fn write_stream(path: &Path, batches: &[RecordBatch]) {
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(std::fs::File::create(path).unwrap(), &batches[0].schema()).unwrap();
        batches.iter().for_each(|b| writer.write(b).unwrap());
        writer.finish().unwrap();
    }

    #[test]
    fn an_arrow_shard_read_in_blocks_is_the_same_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (acts, _, ids) = data();
        // Record batches of 2 and 1 rows: a block of one row ends inside the first batch, one of
        // two rows is exactly it.
        let path = dir.path().join("data-00000-of-00001.arrow");
        write_stream(&path, &[batch(&acts, &ids, 0..2), batch(&acts, &ids, 2..B)]);
        let whole = soft_cluster_core::read_chunk(&path).unwrap();
        assert_eq!(whole.token_ids.as_deref(), Some(&ids[..]));
        for (block_bytes, firsts) in [(S * D * 4, vec![0, 1, 2]), (2 * S * D * 4, vec![0, 2]), (usize::MAX, vec![0])] {
            let blocks: Vec<_> = soft_cluster_core::sources::blocks(&path, block_bytes).unwrap().map(|b| b.unwrap()).collect();
            assert_eq!(blocks.iter().map(|b| b.first_row).collect::<Vec<_>>(), firsts);
            assert!(blocks.iter().all(|b| b.file_batch == B));
            let values: Vec<f32> = blocks.iter().flat_map(|b| b.activations.to_f32()).collect();
            assert_eq!(soft_cluster_core::Activations::F32(values), whole.activations);
            let block_ids: Vec<i64> = blocks.iter().flat_map(|b| b.token_ids.clone().unwrap()).collect();
            assert_eq!(block_ids, ids);
        }
    }

    #[test]
    fn streamed_arrow_shards_are_read_into_two_reused_buffers() {
        use soft_cluster_core::stream::stream_chunks_with;
        let dir = tempfile::tempdir().unwrap();
        let (acts, _, ids) = data();
        let shards: Vec<PathBuf> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("data-{i:05}-of-00005.arrow"));
                let scaled: Vec<f32> = acts.iter().map(|v| v * (i + 1) as f32).collect();
                write_stream(&path, &[batch(&scaled, &ids, 0..B)]);
                path
            })
            .collect();
        let fresh: Vec<_> = shards.iter().map(|p| read_chunk(p).unwrap()).collect();
        let (mut spares, mut buffers) = (Vec::new(), std::collections::HashSet::new());
        for pass in 0..3 {
            stream_chunks_with(1, &shards, D, &mut spares, |i, chunk| {
                assert_eq!(chunk.activations, fresh[i].activations, "pass {pass}, shard {i}: the values of a reused buffer");
                buffers.insert(match &chunk.activations {
                    soft_cluster_core::Activations::F32(v) => v.as_ptr() as usize,
                    other => panic!("float32 shards read as {other:?}"),
                });
                Ok(Some(chunk))
            })
            .unwrap();
        }
        // Every shard of every pass in the same two buffers (a fresh array per shard faults its
        // pages in again each time).
        assert_eq!(buffers.len(), 2, "{buffers:?}");
    }

    #[test]
    fn arrow_shards_fit_like_their_npz_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (acts, _, ids) = data();
        let npz = dir.path().join("ref.npz");
        write_chunk(&npz, B, S, D, &acts, None, Some(&ids));
        let reference = fit(&npz, &dir.path().join("out_ref"));

        // An IPC stream in two record batches (variable-size lists).
        let stream = dir.path().join("data-00000-of-00001.arrow");
        write_stream(&stream, &[batch(&acts, &ids, 0..1), batch(&acts, &ids, 1..B)]);
        assert_eq!(chunk_shape(&stream).unwrap(), (B, S, D));
        let out = dir.path().join("out_stream");
        let model = fit(&stream, &out);
        same_fit("arrow stream", &reference, &model, &dir.path().join("out_ref"), &out, "ref.memberships.npz", "data-00000-of-00001.memberships.npz");

        // The IPC file format, fixed-size lists of float16: the same as float32 of the rounded values.
        let halves: Vec<f16> = acts.iter().map(|&v| f16::from_f32(v)).collect();
        let mut column = FixedSizeListBuilder::new(FixedSizeListBuilder::new(Float16Builder::new(), D as i32), S as i32);
        for b in 0..B {
            for s in 0..S {
                let t = b * S + s;
                column.values().values().append_slice(&halves[t * D..(t + 1) * D]);
                column.values().append(true);
            }
            column.append(true);
        }
        let batch16 = RecordBatch::try_from_iter([("acts", Arc::new(column.finish()) as ArrayRef)]).unwrap();
        let file = dir.path().join("half.arrow");
        let mut writer = arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(&file).unwrap(), &batch16.schema()).unwrap();
        writer.write(&batch16).unwrap();
        writer.finish().unwrap();
        let rounded = dir.path().join("rounded.npz");
        write_chunk(&rounded, B, S, D, &halves.iter().map(|v| v.to_f32()).collect::<Vec<_>>(), None, None);
        let want = fit(&rounded, &dir.path().join("out_rounded"));
        let got = fit(&file, &dir.path().join("out_half"));
        same_fit("arrow file f16", &want, &got, &dir.path().join("out_rounded"), &dir.path().join("out_half"), "rounded.memberships.npz", "half.memberships.npz");
    }

    #[test]
    fn bad_arrow_shards_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (acts, _, ids) = data();
        let good = dir.path().join("good.arrow");
        write_stream(&good, &[batch(&acts, &ids, 0..B)]);
        let whole = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.arrow");
        std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
        assert!(refused(&truncated).contains("ERR_BAD_CHUNK"), "{}", refused(&truncated));

        // A row whose sequence is shorter than the first's.
        let mut column = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
        for (b, len) in [(0, S), (1, S - 1)] {
            for s in 0..len {
                let t = b * S + s;
                column.values().values().append_slice(&acts[t * D..(t + 1) * D]);
                column.values().append(true);
            }
            column.append(true);
        }
        let ragged = dir.path().join("ragged.arrow");
        write_stream(&ragged, &[RecordBatch::try_from_iter([("acts", Arc::new(column.finish()) as ArrayRef)]).unwrap()]);
        assert!(refused(&ragged).contains("acts: row 0+1 is not [40, 16] like the first row"), "{}", refused(&ragged));

        // Only integers: no activations column.
        let mut ints = FixedSizeListBuilder::new(Int32Builder::new(), 2);
        ints.values().append_slice(&[1, 2]);
        ints.append(true);
        let no_floats = dir.path().join("no_floats.arrow");
        write_stream(&no_floats, &[RecordBatch::try_from_iter([("token_ids", Arc::new(ints.finish()) as ArrayRef)]).unwrap()]);
        assert!(refused(&no_floats).contains("no 2-D float column (list of lists of floats) among the columns token_ids"));
    }
}

#[test]
fn a_safetensors_file_read_in_blocks_is_the_same_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, mask, ids) = data();
    let brains: Vec<bf16> = acts.iter().map(|&v| bf16::from_f32(v)).collect();
    let path = dir.path().join("big.safetensors");
    write_safetensors(&path, "activations", Dtype::BF16, &bytes(&brains, bf16::to_le_bytes), Some(&mask), Some(&ids));
    let whole = read_chunk(&path).unwrap();
    let row_bytes = S * D * 2;
    // Blocks of 1 and 2 sequences (and one of everything).
    for (block_bytes, n_blocks) in [(row_bytes, B), (2 * row_bytes + 1, 2), (usize::MAX, 1)] {
        let blocks: Vec<_> = soft_cluster_core::sources::blocks(&path, block_bytes).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(blocks.len(), n_blocks);
        let mut first = 0;
        let mut values = Vec::new();
        for b in &blocks {
            assert_eq!((b.first_row, b.file_batch, b.seq_len, b.d_model), (first, B, S, D));
            let tokens = first * S..(first + b.batch) * S;
            assert_eq!(b.attention_mask.as_deref(), Some(&whole.attention_mask.as_ref().unwrap()[tokens.clone()]));
            assert_eq!(b.token_ids.as_deref(), Some(&whole.token_ids.as_ref().unwrap()[tokens]));
            let soft_cluster_core::Activations::BF16(v) = &b.activations else { panic!("bf16 kept") };
            values.extend_from_slice(v);
            first += b.batch;
        }
        assert_eq!(first, B);
        assert_eq!(soft_cluster_core::Activations::BF16(values), whole.activations);
    }
}

#[test]
fn a_npy_dump_read_in_blocks_is_the_same_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (acts, _, _) = data();
    let path = dir.path().join("dump.npy");
    std::fs::write(&path, npy_bytes("<f4", false, &[B, S, D], &bytes(&acts, f32::to_le_bytes))).unwrap();
    let whole = read_chunk(&path).unwrap();
    for (block_bytes, n_blocks) in [(S * D * 4, B), (2 * S * D * 4, 2), (usize::MAX, 1)] {
        let blocks: Vec<_> = soft_cluster_core::sources::blocks(&path, block_bytes).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(blocks.len(), n_blocks);
        assert_eq!(blocks.iter().map(|b| b.first_row).collect::<Vec<_>>(), (0..B).step_by(B.div_ceil(n_blocks)).collect::<Vec<_>>());
        let values: Vec<f32> = blocks.iter().flat_map(|b| b.activations.to_f32()).collect();
        assert_eq!(soft_cluster_core::Activations::F32(values), whole.activations);
    }
    // Big-endian, Fortran order and [T, D] files are one block, read by the general path.
    let big_endian: Vec<u8> = acts.iter().flat_map(|v| v.to_be_bytes()).collect();
    let other = dir.path().join("be.npy");
    std::fs::write(&other, npy_bytes(">f4", false, &[B, S, D], &big_endian)).unwrap();
    let blocks: Vec<_> = soft_cluster_core::sources::blocks(&other, S * D * 4).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].activations, whole.activations);
}
