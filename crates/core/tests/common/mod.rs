//! Shared helpers of the integration tests: fixture paths, hand-made `.npz` files and the
//! float64 reference of docs/algorithm.md "Memberships" that every backend is checked against.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// `fixtures/NAME`; `SOFT_CLUSTER_FIXTURES` points elsewhere when the test binary runs on
/// another machine (benches/gpu-check.sh).
pub fn fixture(name: &str) -> PathBuf {
    match std::env::var_os("SOFT_CLUSTER_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(name),
    }
}

/// Bytes of a `.npy` file (format 1.0) with the given header fields and raw data.
pub fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_str}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// Writes an `.npz` with the given members (names without `.npy`), stored or deflated.
pub fn write_npz(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Reads an int64 / float32 array of an `.npz` that is not a chunk (expected outputs).
pub fn read_npz_i64(path: &Path, name: &str) -> (Vec<usize>, Vec<i64>) {
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let a: ndarray::ArrayD<i64> = npz.by_name(name).unwrap();
    (a.shape().to_vec(), a.iter().copied().collect())
}

pub fn read_npz_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let a: ndarray::ArrayD<f32> = npz.by_name(name).unwrap();
    (a.shape().to_vec(), a.iter().copied().collect())
}

/// The membership formula (docs/algorithm.md "Memberships") in float64, written the plain way: one row of activations in, one row of memberships out.
pub fn reference_row(a: &[f64], centers: &[f32], k: usize, temperature: f64, min_membership: f64) -> Vec<f64> {
    let d = a.len();
    let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let s: Vec<f64> = (0..k)
        .map(|c| (0..d).map(|j| a[j] / norm * f64::from(centers[c * d + j])).sum::<f64>() / temperature)
        .collect();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|v| v / sum).collect();
    let argmax = (0..k).fold(0, |b, c| if p[c] > p[b] { c } else { b });
    for (c, v) in p.iter_mut().enumerate() {
        if *v < min_membership && c != argmax {
            *v = 0.0;
        }
    }
    let kept: f64 = p.iter().sum();
    p.iter().map(|v| v / kept).collect()
}

/// A reference row is "ambiguous" when float rounding may legitimately flip a decision of the membership formula (docs/algorithm.md "Memberships"):
/// an entry within `margin` of the threshold, or two cosines tied for the maximum.
pub fn ambiguous(a: &[f64], centers: &[f32], k: usize, temperature: f64, min_membership: f64) -> bool {
    let unfiltered = reference_row(a, centers, k, temperature, 0.0);
    let margin = 1e-5;
    if min_membership > 0.0 && unfiltered.iter().any(|&p| (p - min_membership).abs() < margin) {
        return true;
    }
    let mut sorted = unfiltered.clone();
    sorted.sort_by(|x, y| y.partial_cmp(x).unwrap());
    k > 1 && (sorted[0] - sorted[1]).abs() < margin && sorted[1] < min_membership + margin
}

/// Unit-normalized random-ish centers, deterministic.
pub fn unit_rows(k: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(k * d);
    for _ in 0..k {
        let row: Vec<f64> = (0..d).map(|_| next()).collect();
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        out.extend(row.iter().map(|v| (v / n) as f32));
    }
    out
}

/// Writes a chunk `.npz` with float32 activations `[b, s, d]`, a bool mask and int64 token ids.
pub fn write_chunk(path: &Path, b: usize, s: usize, d: usize, acts: &[f32], mask: Option<&[u8]>, ids: Option<&[i64]>) {
    let mut members = vec![("activations", npy_bytes("<f4", false, &[b, s, d], &acts.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()))];
    if let Some(m) = mask {
        members.push(("attention_mask", npy_bytes("|b1", false, &[b, s], m)));
    }
    if let Some(ids) = ids {
        members.push(("token_ids", npy_bytes("<i8", false, &[b, s], &ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())));
    }
    write_npz(path, &members, false);
}

/// The settings `planted_expected.json` was computed with.
pub fn planted_config() -> soft_cluster_core::ClusteringConfig {
    let mut c = soft_cluster_core::ClusteringConfig::new(6, 64);
    c.temperature = soft_cluster_core::Temperature::Fixed(0.25);
    c.min_membership = 0.01;
    c.n_iterations = 5;
    c.n_exemplars = 3;
    c.context_window = 2;
    c.tol = 0.0;
    c
}

/// Planted directions of uneven sizes in `n_chunks` files; returns the chunk paths and directions.
pub fn planted_chunks(dir: &Path, n_chunks: usize, k: usize, d: usize, seed: u64) -> (Vec<PathBuf>, Vec<f32>) {
    let truth = unit_rows(k, d, seed);
    let noise = unit_rows(n_chunks * 4 * 64, d, seed + 1);
    let mut paths = Vec::new();
    for c in 0..n_chunks {
        let (b, s) = (4, 64);
        let mut acts = Vec::with_capacity(b * s * d);
        let mut mask = Vec::with_capacity(b * s);
        for t in 0..b * s {
            let g = c * b * s + t;
            let cluster = [0, 0, 0, 1, 1, 2, 3, 4, 5, 0, 1, 2][g % 12] % k; // uneven sizes
            let norm = 0.1 + (g % 17) as f32; // norms over two orders of magnitude
            acts.extend((0..d).map(|j| norm * (truth[cluster * d + j] + 0.35 * noise[g * d + j])));
            mask.push(u8::from(t % 64 < 56)); // padding at the end of each sequence
        }
        let ids: Vec<i64> = (0..b * s).map(|t| (t * 31 % 1000) as i64).collect();
        let p = dir.join(format!("chunk_{c:03}.npz"));
        write_chunk(&p, b, s, d, &acts, Some(&mask), Some(&ids));
        paths.push(p);
    }
    (paths, truth)
}

pub fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

/// A fit split over devices or ranks against the one-device, one-process fit of the same chunks
/// (`one` written into `one_dir`, `many` into `many_dir`): centers within 1e-6 (cosine), the same
/// counts, exemplars and quantile examples, the same history apart from timings, memberships
/// files with the same entries and values within 1e-5. Masses and objectives are float64 sums of
/// float32 memberships whose GEMM blocks differ by split, so they agree to about 1e-9 relative.
pub fn assert_same_fit(one: &soft_cluster_core::Model, one_dir: &Path, many: &soft_cluster_core::Model, many_dir: &Path, chunks: &[PathBuf], what: &str) {
    use soft_cluster_core::{memberships_file, Model};
    // The same temperature, the same start.
    assert_eq!(many.config.temperature, one.config.temperature, "{what}");
    for c in 0..one.centers.k {
        let cos: f64 = one.centers.row(c).iter().zip(many.centers.row(c)).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        assert!(1.0 - cos < 1e-6, "{what}, cluster {c}: cosine {cos}");
    }
    assert_eq!(many.cluster_count, one.cluster_count, "{what}");
    one.cluster_mass.iter().zip(&many.cluster_mass).for_each(|(a, b)| close(*a, *b, 1e-6, "mass"));
    assert_eq!(many.history.len(), one.history.len(), "{what}");
    for (x, y) in one.history.iter().zip(&many.history) {
        assert_eq!((x.reseeds, x.twins, x.skipped), (y.reseeds, y.twins, y.skipped), "{what}");
        close(x.objective, y.objective, 1e-6, "objective");
        x.mass.iter().zip(&y.mass).for_each(|(a, b)| close(*a, *b, 1e-6, "history mass"));
    }
    assert_eq!(many.chunks, one.chunks, "{what}");
    // Exemplars and quantile examples: the same tokens, values within float32 rounding.
    let locations = |m: &Model| m.exemplars.iter().map(|l| l.iter().map(|e| e.location()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(locations(many), locations(one), "{what}");
    let sampled = |m: &Model| m.quantiles.iter().map(|bins| bins.iter().map(|l| l.iter().map(|e| e.location()).collect::<Vec<_>>()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(sampled(many), sampled(one), "{what}");
    // Memberships files: the same entries, values within 1e-5.
    for chunk in chunks {
        let name = memberships_file::file_name_for(&chunk.file_name().unwrap().to_string_lossy());
        let (a, b) = (memberships_file::read(&one_dir.join(&name)).unwrap(), memberships_file::read(&many_dir.join(&name)).unwrap());
        assert_eq!(a.indices, b.indices, "{what}: {name}");
        a.values.iter().zip(&b.values).for_each(|(x, y)| assert!((x - y).abs() < 1e-5, "{what}: {name}: {x} vs {y}"));
    }
}
