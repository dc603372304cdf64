//! The chunk reader against every fixture and against hand-made files of every accepted dtype,
//! byte order, memory order and compression (docs/formats.md "Input chunks").

mod common;
use common::*;
use soft_cluster_core::kernels::cpu::CpuBackend;
use soft_cluster_core::{read_chunk, Activations, Backend, Centers, Error, MembershipParams, Tokens, Want};

fn refused(name: &str) -> Error {
    let path = fixture(name);
    let err = read_chunk(&path).expect_err(&format!("{name} must be refused"));
    assert!(err.to_string().contains(path.to_str().unwrap()), "{name}: error does not name the file: {err}");
    err
}

fn assert_mentions(err: &Error, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} should mention {w:?}");
    }
}

#[test]
fn planted_fixtures_read_as_numpy_wrote_them() {
    let a = read_chunk(&fixture("planted_a_f32.npz")).unwrap();
    assert_eq!((a.batch, a.seq_len, a.d_model), (5, 32, 64));
    assert!(matches!(a.activations, Activations::F32(_)));
    assert_eq!(a.attention_mask.as_ref().unwrap().iter().filter(|&&m| m != 0).count(), 137);
    assert_eq!(a.token_ids.as_ref().unwrap().iter().sum::<i64>(), 37977);
    let values = a.activations.to_f32();
    // Values printed by numpy: a[0, 1, 2] and the total.
    assert_eq!(values[64 + 2], -0.032_981_735_f32);
    let total: f64 = values.iter().map(|&v| f64::from(v)).sum();
    assert!((total - 504.988_277_953_103_5).abs() < 1e-6);

    let b = read_chunk(&fixture("planted_b_f16_compressed.npz")).unwrap();
    assert_eq!((b.batch, b.seq_len, b.d_model), (3, 32, 64));
    assert!(matches!(b.activations, Activations::F16(_)));
    assert_eq!(b.attention_mask.as_ref().unwrap().iter().filter(|&&m| m != 0).count(), 78);
    assert_eq!(b.token_ids.as_ref().unwrap().iter().sum::<i64>(), 23977);
    let values = b.activations.to_f32();
    assert_eq!(values[64 + 2], -0.348_144_53_f32);
    assert_eq!(values.iter().map(|&v| f64::from(v)).sum::<f64>(), 279.523_139_476_776_1);

    let flat = read_chunk(&fixture("flat_2d_f64.npz")).unwrap();
    assert_eq!((flat.batch, flat.seq_len, flat.d_model), (1, 32, 64));
    assert!(matches!(flat.activations, Activations::F64(_)));
    assert!(flat.attention_mask.is_none() && flat.token_ids.is_none());
    if let Activations::F64(v) = &flat.activations {
        assert_eq!(v[64 + 2], -0.032_981_733_369_433_43);
        assert_eq!(*v.last().unwrap(), 0.897_913_337_940_236_1);
    }
}

#[test]
fn fortran_order_is_read_in_logical_order() {
    let f = read_chunk(&fixture("bad/fortran_order.npz")).unwrap();
    assert_eq!((f.batch, f.seq_len, f.d_model), (2, 32, 64));
    let v = f.activations.to_f32();
    assert_eq!(v[64 + 2], -0.032_981_735_f32, "a[0, 1, 2]");
    assert_eq!(*v.last().unwrap(), -1.518_578_8_f32, "a[-1, -1, -1]");
    assert_eq!(f.attention_mask.as_ref().unwrap().iter().filter(|&&m| m != 0).count(), 54);
}

#[test]
fn legal_edge_cases_give_no_rows() {
    let centers = Centers::from_rows(2, 64, unit_rows(2, 64, 1)).unwrap();
    let params = MembershipParams { temperature: 1.0, min_membership: 0.01 };
    for name in ["bad/all_masked.npz", "bad/empty_batch.npz"] {
        let chunk = read_chunk(&fixture(name)).unwrap();
        let out = CpuBackend::default()
            .run(&centers, &Tokens::from_chunk(&chunk, 0), params, Want { dense: true, sparse: true, stats: true, sums: true })
            .unwrap();
        assert_eq!(out.rows.len(), 0, "{name}");
        assert_eq!(out.dense.unwrap().len(), 0);
        assert_eq!(out.sparse.unwrap().offset, vec![0]);
        let stats = out.stats.unwrap();
        assert_eq!((stats.n_rows, stats.mass.iter().sum::<f64>()), (0, 0.0));
    }
    assert_eq!(read_chunk(&fixture("bad/empty_batch.npz")).unwrap().batch, 0);
}

#[test]
fn every_bad_fixture_is_refused_with_file_array_and_problem() {
    assert_mentions(&refused("bad/bad_npy_header.npz"), &["activations", "header"]);
    assert_mentions(&refused("bad/missing_activations.npz"), &["activations", "missing"]);
    assert_mentions(&refused("bad/mask_shape_mismatch.npz"), &["attention_mask", "[2, 10]", "[2, 32]"]);
    assert_mentions(&refused("bad/token_shape_mismatch.npz"), &["token_ids", "[1, 32]"]);
    assert_mentions(&refused("bad/not_a_zip.npz"), &["zip"]);
    assert_mentions(&refused("bad/truncated.npz"), &["zip"]);
    assert_mentions(&refused("bad/object_pickle.npz"), &["activations", "pickled"]);
    assert_mentions(&refused("bad/one_dim.npz"), &["activations", "rank 1", "[4096]"]);
    assert_mentions(&refused("bad/string_activations.npz"), &["activations", "<U1"]);
    for name in ["bad/bad_npy_header.npz", "bad/not_a_zip.npz", "bad/object_pickle.npz"] {
        assert_eq!(refused(name).code(), "ERR_BAD_CHUNK");
    }
}

#[test]
fn nan_in_a_real_token_names_file_batch_and_position() {
    let path = fixture("bad/nan_in_valid_token.npz");
    let chunk = read_chunk(&path).unwrap();
    let centers = Centers::from_rows(3, 64, unit_rows(3, 64, 2)).unwrap();
    let err = CpuBackend::default()
        .run(&centers, &Tokens::from_chunk(&chunk, 0), MembershipParams { temperature: 1.0, min_membership: 0.0 }, Want::default())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_NON_FINITE");
    assert_mentions(&err, &[path.to_str().unwrap(), "batch 1", "position 3", "NaN"]);
}

#[test]
fn wrong_d_model_is_refused_naming_both_sizes() {
    let path = fixture("bad/wrong_d_model.npz");
    let chunk = read_chunk(&path).unwrap();
    let err = chunk.check_d_model(64).unwrap_err();
    assert_mentions(&err, &[path.to_str().unwrap(), "activations", "D = 48", "64"]);
    let centers = Centers::from_rows(2, 64, unit_rows(2, 64, 3)).unwrap();
    let err = CpuBackend::default()
        .run(&centers, &Tokens::from_chunk(&chunk, 0), MembershipParams { temperature: 1.0, min_membership: 0.0 }, Want::default())
        .unwrap_err();
    assert_mentions(&err, &["D = 48", "dModel is 64"]);
}

/// Raw bytes of `values` in the given numpy dtype and byte order.
fn encode(values: &[f64], kind: &str, big: bool) -> Vec<u8> {
    macro_rules! bytes {
        ($t:ty) => {
            values.iter().flat_map(|&v| if big { (v as $t).to_be_bytes().to_vec() } else { (v as $t).to_le_bytes().to_vec() }).collect()
        };
    }
    match kind {
        "f2" => values
            .iter()
            .flat_map(|&v| {
                let h = half::f16::from_f64(v);
                if big { h.to_be_bytes().to_vec() } else { h.to_le_bytes().to_vec() }
            })
            .collect(),
        "f4" => bytes!(f32),
        "f8" => bytes!(f64),
        "i1" => bytes!(i8),
        "u1" => bytes!(u8),
        "i2" => bytes!(i16),
        "u2" => bytes!(u16),
        "i4" => bytes!(i32),
        "u4" => bytes!(u32),
        "i8" => bytes!(i64),
        "u8" => bytes!(u64),
        "b1" => values.iter().map(|&v| u8::from(v != 0.0)).collect(),
        _ => unreachable!(),
    }
}

/// Values of a C-order `[2, 3, 4]` array laid out in Fortran order.
fn fortran_of(c_order: &[f64], shape: &[usize]) -> Vec<f64> {
    let n: usize = shape.iter().product();
    let mut out = vec![0.0; n];
    for (flat, &v) in c_order.iter().enumerate() {
        let mut rem = flat;
        let mut idx = vec![0; shape.len()];
        for dim in (0..shape.len()).rev() {
            idx[dim] = rem % shape[dim];
            rem /= shape[dim];
        }
        let mut f = 0;
        for dim in (0..shape.len()).rev() {
            f = f * shape[dim] + idx[dim];
        }
        out[f] = v;
    }
    out
}

#[test]
fn every_accepted_dtype_byte_order_layout_and_compression_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [2usize, 3, 4];
    let acts: Vec<f64> = (0..24).map(|i| i as f64 * 0.25 - 3.0).collect();
    let mask: Vec<f64> = vec![1.0, 0.0, 2.0, 1.0, 1.0, 0.0];
    let ids: Vec<f64> = vec![5.0, 6.0, 7.0, 60000.0, 9.0, 10.0];
    let mut case = 0;
    for act_kind in ["f2", "f4", "f8"] {
        for big in [false, true] {
            for fortran in [false, true] {
                for deflate in [false, true] {
                    for (mask_kind, id_kind) in [("b1", "i4"), ("i1", "i8"), ("u1", "u2"), ("i2", "u4"), ("u2", "i8"), ("i4", "i4"), ("u4", "u2"), ("i8", "i8"), ("u8", "u4")] {
                        case += 1;
                        let order = if big { ">" } else { "<" };
                        let one = |k: &str| if matches!(k, "b1" | "i1" | "u1") { "|" } else { order };
                        let data = if fortran { fortran_of(&acts, &shape) } else { acts.clone() };
                        let (mask_data, ids_data) = if fortran {
                            (fortran_of(&mask, &shape[..2]), fortran_of(&ids, &shape[..2]))
                        } else {
                            (mask.clone(), ids.clone())
                        };
                        let path = dir.path().join(format!("case{case}.npz"));
                        write_npz(
                            &path,
                            &[
                                ("activations", npy_bytes(&format!("{order}{act_kind}"), fortran, &shape, &encode(&data, act_kind, big))),
                                ("attention_mask", npy_bytes(&format!("{}{mask_kind}", one(mask_kind)), fortran, &shape[..2], &encode(&mask_data, mask_kind, big))),
                                ("token_ids", npy_bytes(&format!("{}{id_kind}", one(id_kind)), fortran, &shape[..2], &encode(&ids_data, id_kind, big))),
                            ],
                            deflate,
                        );
                        let label = format!("{act_kind} big={big} fortran={fortran} deflate={deflate} mask={mask_kind} ids={id_kind}");
                        let chunk = read_chunk(&path).unwrap_or_else(|e| panic!("{label}: {e}"));
                        assert_eq!((chunk.batch, chunk.seq_len, chunk.d_model), (2, 3, 4), "{label}");
                        let got: Vec<f64> = chunk.activations.to_f32().iter().map(|&v| f64::from(v)).collect();
                        assert_eq!(got, acts, "{label}");
                        assert_eq!(chunk.activations.dtype(), ["float16", "float32", "float64"][["f2", "f4", "f8"].iter().position(|k| *k == act_kind).unwrap()]);
                        assert_eq!(chunk.attention_mask.unwrap(), vec![1, 0, 1, 1, 1, 0], "{label}");
                        assert_eq!(chunk.token_ids.unwrap(), vec![5, 6, 7, 60000, 9, 10], "{label}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_header_that_claims_more_data_than_the_member_holds_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.npz");
    // Claims 10^6 x 10^6 float32 (4 TB) but holds 16 bytes.
    write_npz(&path, &[("activations", npy_bytes("<f4", false, &[1_000_000, 1_000_000], &[0u8; 16]))], true);
    let err = read_chunk(&path).unwrap_err();
    assert!(err.to_string().contains("declares"), "{err}");
    let path = dir.path().join("short.npz");
    write_npz(&path, &[("activations", npy_bytes("<f4", false, &[2, 4], &[0u8; 31]))], false);
    let err = read_chunk(&path).unwrap_err();
    assert!(err.to_string().contains("32 bytes") && err.to_string().contains("31 bytes"), "{err}");
}

#[test]
fn two_dimensional_chunks_accept_flat_masks_and_refuse_other_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.npz");
    let acts = encode(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], "f4", false);
    write_npz(
        &path,
        &[
            ("activations", npy_bytes("<f4", false, &[3, 2], &acts)),
            ("attention_mask", npy_bytes("|b1", false, &[3], &[1, 0, 1])),
        ],
        false,
    );
    let chunk = read_chunk(&path).unwrap();
    assert_eq!((chunk.batch, chunk.seq_len, chunk.attention_mask.unwrap()), (1, 3, vec![1, 0, 1]));

    for (array, descr, bytes, needle) in [
        ("token_ids", "<f4", encode(&[1.0, 2.0, 3.0], "f4", false), "token_ids: has dtype <f4"),
        ("token_ids", "|i1", encode(&[1.0, 2.0, 3.0], "i1", false), "token_ids: has dtype |i1"),
        ("attention_mask", "<f8", encode(&[1.0, 2.0, 3.0], "f8", false), "attention_mask: has dtype <f8"),
        ("attention_mask", "<c8", vec![0u8; 24], "attention_mask: has dtype <c8"),
    ] {
        write_npz(&path, &[("activations", npy_bytes("<f4", false, &[3, 2], &acts)), (array, npy_bytes(descr, false, &[3], &bytes))], false);
        let err = read_chunk(&path).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} should contain {needle}");
    }
    write_npz(&path, &[("activations", npy_bytes("<i4", false, &[3, 2], &encode(&[1.0; 6], "i4", false)))], false);
    assert!(read_chunk(&path).unwrap_err().to_string().contains("activations: has dtype <i4; expected float16, float32 or float64"));
}

#[test]
fn chunk_shape_reads_only_the_header() {
    use soft_cluster_core::sources::chunk_shape;
    assert_eq!(chunk_shape(&fixture("planted_a_f32.npz")).unwrap(), (5, 32, 64));
    assert_eq!(chunk_shape(&fixture("flat_2d_f64.npz")).unwrap(), (1, 32, 64));
    assert_eq!(chunk_shape(&fixture("planted_b_f16_compressed.npz")).unwrap(), (3, 32, 64));
    assert!(chunk_shape(&fixture("bad/missing_activations.npz")).unwrap_err().to_string().contains("missing"));
    assert!(chunk_shape(&fixture("bad/one_dim.npz")).unwrap_err().to_string().contains("rank 1"));
    assert!(chunk_shape(&fixture("bad/not_a_zip.npz")).is_err());
    // A dimension beyond 32 bits is refused by name, not truncated (it read as D = 1).
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge_d.npz");
    write_npz(&huge, &[("activations", npy_bytes("<f2", false, &[1, (1 << 32) + 1], &[]))], false);
    let err = chunk_shape(&huge).unwrap_err().to_string();
    assert!(err.contains("huge_d.npz") && err.contains("4294967297, more than 2^32 - 1"), "{err}");
}

/// Large uncompressed members take the parallel read; it must give the same arrays as the
/// general path (the deflated copy) and refuse a corrupted byte through the CRC-32.
#[test]
fn large_stored_members_read_in_parallel_match_and_are_crc_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (b, s, d) = (3, 257, 700); // 539,700 values: over 1 MiB in every float type
    let values: Vec<f32> = (0..b * s * d).map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0).collect();
    for (descr, bytes) in [
        ("<f2", values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect::<Vec<u8>>()),
        ("<f4", values.iter().flat_map(|&v| v.to_le_bytes()).collect()),
        ("<f8", values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect()),
    ] {
        let mask: Vec<u8> = (0..b * s).map(|i| u8::from(i % 5 != 0)).collect();
        let members = |bytes: &[u8]| vec![("activations", npy_bytes(descr, false, &[b, s, d], bytes)), ("attention_mask", npy_bytes("|b1", false, &[b, s], &mask))];
        let stored = dir.path().join(format!("stored{descr}.npz"));
        let deflated = dir.path().join(format!("deflated{descr}.npz"));
        write_npz(&stored, &members(&bytes), false);
        write_npz(&deflated, &members(&bytes), true);
        let (fast, general) = (read_chunk(&stored).unwrap(), read_chunk(&deflated).unwrap());
        assert_eq!((fast.batch, fast.seq_len, fast.d_model), (b, s, d), "{descr}");
        assert!(fast.activations == general.activations, "{descr}: activations differ");
        assert_eq!(fast.attention_mask, general.attention_mask, "{descr}");

        // Flip one byte of the activations' data, deep inside the member.
        let mut raw = std::fs::read(&stored).unwrap();
        let at = raw.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 200_000;
        raw[at] ^= 0x40;
        let corrupt = dir.path().join(format!("corrupt{descr}.npz"));
        std::fs::write(&corrupt, &raw).unwrap();
        let err = read_chunk(&corrupt).unwrap_err();
        assert_eq!(err.code(), "ERR_BAD_CHUNK", "{descr}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("CRC-32") && msg.contains("activations") && msg.contains(corrupt.to_str().unwrap()), "{descr}: {msg}");
    }
}

/// Issue 20 case 14: ids beyond 2^53 - 1 changed on their way to JavaScript (2^63 - 1 showed
/// as 9223372036854776000) and a negative id read as "no token": a real token's id out of
/// 0..=2^53-1 is refused, naming where; padding may hold anything.
#[test]
fn token_ids_out_of_the_exact_range_are_refused_at_real_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let acts = vec![0.5f32; 2 * 3 * 4];
    let mask = [1u8, 1, 0, 1, 1, 1];
    let path = dir.path().join("ids.npz");
    let mut ids = vec![1i64, 2, i64::MIN, 4, 5, 6];
    write_chunk(&path, 2, 3, 4, &acts, Some(&mask), Some(&ids));
    assert_eq!(read_chunk(&path).unwrap().token_ids.unwrap()[2], i64::MIN, "padding may hold anything");
    for (bad, at) in [(i64::MAX, "batch 1, position 1: id 9223372036854775807"), ((1 << 53), "batch 1, position 1: id 9007199254740992"), (-1, "batch 1, position 1: id -1")] {
        ids[4] = bad;
        write_chunk(&path, 2, 3, 4, &acts, Some(&mask), Some(&ids));
        let err = read_chunk(&path).unwrap_err();
        assert_eq!(err.code(), "ERR_BAD_CHUNK");
        assert!(err.to_string().contains(&format!("token_ids: {at} is out of range")), "{err}");
    }
    ids[4] = (1 << 53) - 1;
    write_chunk(&path, 2, 3, 4, &acts, Some(&mask), Some(&ids));
    assert_eq!(read_chunk(&path).unwrap().token_ids.unwrap()[4], (1 << 53) - 1);
}
