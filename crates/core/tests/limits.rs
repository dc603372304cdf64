//! Issue 20 case 9: a small hostile file cannot exhaust the machine. A deflated member that
//! inflates past what its headers declare is refused after at most one byte more; an array
//! larger than the per-array limit (`--max-chunk-bytes`, default half the available memory) is
//! refused before it is inflated. One test: the limit is process-wide.

mod common;
use common::*;
use soft_cluster_core::memory::{max_chunk_bytes, set_max_chunk_bytes};
use soft_cluster_core::read_chunk;
use std::io::Write;
use std::time::Instant;

/// An `.npz` whose `activations` member declares (in the `.npy` header and in both zip size
/// fields) 4 x 4 float32 values, but whose deflated stream inflates to `real` bytes of data.
fn deflate_bomb(path: &std::path::Path, real: usize) {
    let header_only = npy_bytes("<f4", false, &[4, 4], &[]);
    let mut member = header_only.clone();
    member.resize(header_only.len() + real, 0);
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("activations.npy", options).unwrap();
    zip.write_all(&member).unwrap();
    zip.finish().unwrap();
    // Patch the uncompressed size (local header offset 22, central directory offset 24) to
    // the declared size: the lie the attack told.
    let mut bytes = std::fs::read(path).unwrap();
    let declared = (header_only.len() + 64) as u32;
    let find = |sig: &[u8], bytes: &[u8]| bytes.windows(4).position(|w| w == sig).unwrap();
    let local = find(b"PK\x03\x04", &bytes);
    bytes[local + 22..local + 26].copy_from_slice(&declared.to_le_bytes());
    let central = find(b"PK\x01\x02", &bytes);
    bytes[central + 24..central + 28].copy_from_slice(&declared.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn hostile_sizes_are_refused_without_inflating_them() {
    let dir = tempfile::tempdir().unwrap();

    // 400 MB of zeros in a file of about 400 KB, under a header that declares 64 bytes.
    let bomb = dir.path().join("bomb.npz");
    deflate_bomb(&bomb, 400 << 20);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let started = Instant::now();
    let err = read_chunk(&bomb).unwrap_err();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(err.code(), "ERR_BAD_CHUNK");
    assert!(err.to_string().contains("bomb.npz: activations: cannot decode data"), "{err}");
    // Inflating 400 MB takes about a second here; one byte past the declared data takes none.
    assert!(seconds < 0.1, "refused after {seconds} s: the stream was inflated");

    // The per-array limit: the default is half the available memory (where it can be read).
    if let Some((limit, why)) = max_chunk_bytes() {
        assert!(why.starts_with("half the available memory"));
        assert!(limit > 1 << 20);
    }
    let chunk = fixture("planted_a_f32.npz");
    set_max_chunk_bytes(Some(1000));
    let err = read_chunk(&chunk).unwrap_err();
    assert!(err.to_string().contains("activations: decodes to ") && err.to_string().contains("more than the 1000 bytes one array may take here (--max-chunk-bytes)"), "{err}");
    set_max_chunk_bytes(None);
    read_chunk(&chunk).unwrap();

    // A safetensors file larger than the limit is read in blocks of whole sequences within it,
    // and fits to the same model and memberships files as when read whole.
    let (b, s, d) = (9, 20, 12);
    let acts: Vec<f32> = unit_rows(b * s, d, 3).iter().enumerate().map(|(i, v)| v + if (i / d) % 3 == 0 { 0.8 } else { -0.2 } * ((i % d) as f32 - 5.0) / 5.0).collect();
    let ids: Vec<u8> = (0..(b * s) as i64).flat_map(|i| (i * 7 % 100).to_le_bytes()).collect();
    let mask: Vec<u8> = (0..b * s).map(|t| u8::from(t % s < s - 3)).collect();
    let data: Vec<u8> = acts.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("activations", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b, s, d], &data).unwrap()),
        ("attention_mask", safetensors::tensor::TensorView::new(safetensors::Dtype::BOOL, vec![b, s], &mask).unwrap()),
        ("token_ids", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![b, s], &ids).unwrap()),
    ];
    let big = dir.path().join("big.safetensors");
    std::fs::write(&big, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let mut config = soft_cluster_core::ClusteringConfig::new(4, d);
    config.temperature = soft_cluster_core::Temperature::Fixed(0.1);
    config.n_exemplars = 5;
    config.context_window = 2;
    let fit = |out: &std::path::Path| {
        let request = soft_cluster_core::fit::FitRequest { config: &config, initial_centers: None, chunks: &[big.clone()], output_dir: out, resume: false, overwrite: false, device: None, ranks: &soft_cluster_core::ranks::OneProcess };
        soft_cluster_core::fit::fit_chunks(request, &soft_cluster_core::kernels::cpu::CpuBackend::default(), &mut |_| {}).unwrap()
    };
    let whole = fit(&dir.path().join("whole"));
    set_max_chunk_bytes(Some((2 * s * d * 4) as u64)); // blocks of 2 sequences: 5 blocks
    let blocked = fit(&dir.path().join("blocked"));
    set_max_chunk_bytes(None);
    let worst = whole.centers.data.iter().zip(&blocked.centers.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "centers differ by {worst}");
    let locations = |m: &soft_cluster_core::Model| m.exemplars.iter().flatten().map(|e| (e.chunk, e.batch, e.position, e.tokens.clone())).collect::<Vec<_>>();
    assert_eq!(locations(&whole), locations(&blocked), "exemplars at the same places of the file, with the same context");
    assert!(locations(&blocked).iter().any(|l| l.1 >= 2), "exemplars from later blocks");
    let name = "big.memberships.npz";
    assert_eq!(read_npz_i64(&dir.path().join("whole").join(name), "indices"), read_npz_i64(&dir.path().join("blocked").join(name), "indices"));
    let (a, b_) = (read_npz_f32(&dir.path().join("whole").join(name), "values").1, read_npz_f32(&dir.path().join("blocked").join(name), "values").1);
    assert!(a.iter().zip(&b_).all(|(x, y)| (x - y).abs() < 1e-6));
}
