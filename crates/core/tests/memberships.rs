//! The CPU kernel against the float64 reference of docs/algorithm.md "Memberships" (tests/common), on the numpy fixtures
//! and on random shapes; and the pass statistics against direct sums.

mod common;
use common::*;
use proptest::prelude::*;
use soft_cluster_core::kernels::cpu::{CpuBackend, GemmCrate};
use soft_cluster_core::npz::read_npy_f32;
use soft_cluster_core::{read_chunk, Activations, ActivationsRef, Backend, Centers, MembershipParams, Tokens, Want};

const TOL: f64 = 1e-4;
/// Both GEMM crates, and a block size small enough that the fixtures span several blocks.
fn backends() -> [CpuBackend; 3] {
    [CpuBackend::with_gemm(GemmCrate::Gemm), CpuBackend::with_gemm(GemmCrate::MatrixMultiply), CpuBackend { gemm: GemmCrate::Gemm, block_rows: 7 }]
}
const ALL: Want = Want { dense: true, sparse: true, stats: true, sums: true };

fn as_f64(a: &Activations) -> Vec<f64> {
    match a {
        Activations::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Activations::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Activations::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Activations::F64(v) => v.clone(),
    }
}

/// Checks one backend run against the reference, row by row, and the statistics against
/// sums of the reference memberships. Returns the number of rows compared.
fn check_against_reference(backend: &CpuBackend, tokens: &Tokens, acts: &[f64], centers: &Centers, params: MembershipParams) -> usize {
    let (k, d) = (centers.k, centers.d);
    let out = backend.run(centers, tokens, params, ALL).unwrap();
    let dense = out.dense.unwrap();
    let sparse = out.sparse.unwrap();
    let stats = out.stats.unwrap();
    let mut mass = vec![0f64; k];
    let mut s = vec![0f64; k * d];
    let mut compared = 0;
    for (r, &t) in out.rows.token.iter().enumerate() {
        let t = t as usize;
        let a = &acts[t * d..(t + 1) * d];
        let want = reference_row(a, &centers.data, k, params.temperature, params.min_membership);
        let got = &dense[r * k..(r + 1) * k];
        let (cl, vals) = sparse.row(r);
        let nonzero: Vec<(u32, f32)> = got.iter().enumerate().filter(|(_, &v)| v > 0.0).map(|(c, &v)| (c as u32, v)).collect();
        assert_eq!(nonzero, cl.iter().copied().zip(vals.iter().copied()).collect::<Vec<_>>(), "sparse row {r} = dense row");
        // The statistics are checked against the kernel's own memberships (which are checked
        // against the reference below), so rows where rounding may flip a threshold count too.
        let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        for c in 0..k {
            mass[c] += f64::from(got[c]);
            for j in 0..d {
                s[c * d + j] += f64::from(got[c]) * a[j] / norm;
            }
        }
        if ambiguous(a, &centers.data, k, params.temperature, params.min_membership) {
            continue;
        }
        compared += 1;
        for c in 0..k {
            assert!(
                (f64::from(got[c]) - want[c]).abs() <= TOL,
                "{:?} token {t} cluster {c}: got {} want {} (T={}, min={})",
                backend.gemm, got[c], want[c], params.temperature, params.min_membership
            );
        }
    }
    let n = out.rows.len() as f64;
    assert_eq!(stats.n_rows as usize, out.rows.len());
    for c in 0..k {
        assert!((stats.mass[c] - mass[c]).abs() <= TOL * n.max(1.0), "mass {c}: {} vs {}", stats.mass[c], mass[c]);
    }
    for (got, want) in stats.s.iter().zip(&s) {
        assert!((got - want).abs() <= TOL * n.max(1.0), "S: {got} vs {want}");
    }
    compared
}

fn planted_init() -> Centers {
    let (shape, data) = read_npy_f32(&fixture("planted_init_centers.npy")).unwrap();
    Centers::from_rows(shape[0], shape[1], data).unwrap()
}

#[test]
fn fixtures_match_float64_reference() {
    let centers = planted_init();
    for name in ["planted_a_f32.npz", "planted_b_f16_compressed.npz", "flat_2d_f64.npz", "bad/fortran_order.npz"] {
        let chunk = read_chunk(&fixture(name)).unwrap();
        let acts = as_f64(&chunk.activations);
        for backend in &backends() {
            for (temperature, min_membership) in [(0.25, 0.01), (1.0, 0.01), (0.05, 0.0), (0.001, 0.2), (10.0, 0.3)] {
                let params = MembershipParams { temperature, min_membership };
                let n = check_against_reference(backend, &Tokens::from_chunk(&chunk, 0), &acts, &centers, params);
                assert!(n > 20, "{name}: only {n} rows compared at T={temperature}");
            }
        }
    }
}

#[test]
fn planted_a_matches_the_independent_expected_memberships() {
    let (shape, data) = read_npy_f32(&fixture("planted_expected_centers.npy")).unwrap();
    let centers = Centers::from_rows(shape[0], shape[1], data).unwrap();
    let chunk = read_chunk(&fixture("planted_a_f32.npz")).unwrap();
    let (ishape, indices) = read_npz_i64(&fixture("planted_a_f32.expected.memberships.npz"), "indices");
    let (_, values) = read_npz_f32(&fixture("planted_a_f32.expected.memberships.npz"), "values");
    assert_eq!(ishape[1], 3);
    let k = centers.k;
    let mut expected = vec![0f32; chunk.n_tokens() * k];
    for (row, &v) in indices.chunks_exact(3).zip(&values) {
        expected[(row[0] as usize * chunk.seq_len + row[1] as usize) * k + row[2] as usize] = v;
    }
    for backend in &backends() {
        let out = backend
            .run(&centers, &Tokens::from_chunk(&chunk, 0), MembershipParams { temperature: 0.25, min_membership: 0.01 }, Want { sparse: true, ..Want::default() })
            .unwrap();
        let sparse = out.sparse.unwrap();
        assert_eq!(sparse.nnz(), values.len(), "same number of nonzero memberships");
        let mut got = vec![0f32; chunk.n_tokens() * k];
        for (r, &t) in out.rows.token.iter().enumerate() {
            let (cl, vals) = sparse.row(r);
            for (&c, &v) in cl.iter().zip(vals) {
                got[t as usize * k + c as usize] = v;
            }
        }
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-4, "token {} cluster {}: {g} vs {e}", i / k, i % k);
        }
    }
}

#[test]
fn statistics_count_hard_assignments_objective_skips_and_farthest_token() {
    // Four 2-d tokens, one all-zero (skipped), one masked; two axis-aligned centers.
    let acts: Vec<f32> = vec![3.0, 0.0, 0.0, 0.0, 0.0, -2.0, 1.0, 1.0, 5.0, 5.0];
    let mask = vec![1u8, 1, 1, 1, 0];
    let centers = Centers::from_rows(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    let tokens = Tokens { source: "activations", chunk_index: 4, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 5, d: 2, mask: Some(&mask) };
    let params = MembershipParams { temperature: 0.5, min_membership: 0.0 };
    let out = CpuBackend::default().run(&centers, &tokens, params, ALL).unwrap();
    assert_eq!(out.rows.token, vec![0, 2, 3]);
    let stats = out.stats.unwrap();
    assert_eq!((stats.n_rows, stats.skipped), (3, 1));
    // (0,-2) is closest to C_0 (cos 0 > -1); (1,1)/sqrt2 ties both centers and the first wins.
    assert_eq!(stats.hard_count, vec![3, 0]);
    let mut objective = 0.0;
    for &t in &out.rows.token {
        let a: Vec<f64> = acts[t as usize * 2..t as usize * 2 + 2].iter().map(|&v| f64::from(v)).collect();
        let p = reference_row(&a, &centers.data, 2, 0.5, 0.0);
        let n = (a[0] * a[0] + a[1] * a[1]).sqrt();
        objective += p[0] * a[0] / n + p[1] * a[1] / n;
    }
    assert!((stats.objective() - objective / 3.0).abs() < 1e-6);
    // Token 2 = (0,-2) has the lowest best-cosine (0, against C_0); it is the reseed candidate.
    let far = &stats.farthest[0];
    assert_eq!((far.chunk, far.token, far.vector.clone()), (4, 2, vec![0.0, -1.0]));
    assert!(far.best_cos.abs() < 1e-7);
    // K = 2 keeps two candidates: then (1,1)/sqrt2 with best cosine 0.707.
    assert_eq!(stats.farthest.iter().map(|f| f.token).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn statistics_without_sums_leave_s_out_and_keep_the_rest() {
    // The output pass and the analysis ask for `m` and the counts only: no K x D product.
    let (k, d, n) = (5, 16, 700);
    let acts = unit_rows(n, d, 3);
    let centers = Centers::from_rows(k, d, unit_rows(k, d, 4)).unwrap();
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: n, d, mask: None };
    for min_membership in [0.0, 0.3] {
        let params = MembershipParams { temperature: 0.1, min_membership };
        let backend = CpuBackend { block_rows: 64, ..CpuBackend::default() };
        let with = backend.run(&centers, &tokens, params, ALL).unwrap().stats.unwrap();
        let without = backend.run(&centers, &tokens, params, Want { stats: true, ..Want::default() }).unwrap().stats.unwrap();
        assert_eq!(with.s.len(), k * d);
        assert!(with.s.iter().any(|&v| v != 0.0));
        assert!(without.s.is_empty(), "S was computed though not asked for");
        assert_eq!((&without.mass, &without.hard_count, without.n_rows), (&with.mass, &with.hard_count, with.n_rows));
        assert_eq!(without.objective_sum, with.objective_sum);
        // A pass mixing both merges fine: S comes only from the runs that computed it.
        let mut merged = with.clone();
        merged.merge(without);
        assert_eq!(merged.s, with.s);
    }
}

#[test]
fn mismatched_lengths_are_refused() {
    let centers = Centers::from_rows(2, 3, unit_rows(2, 3, 9)).unwrap();
    let acts = vec![1f32; 7];
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 7, d: 3, mask: None };
    let err = CpuBackend::default().run(&centers, &tokens, MembershipParams { temperature: 1.0, min_membership: 0.0 }, Want::default()).unwrap_err();
    assert!(err.to_string().contains("not a multiple of dModel = 3"), "{err}");
    let acts = vec![1f32; 6];
    let mask = vec![1u8; 3];
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 2, d: 3, mask: Some(&mask) };
    let err = CpuBackend::default().run(&centers, &tokens, MembershipParams { temperature: 1.0, min_membership: 0.0 }, Want::default()).unwrap_err();
    assert!(err.to_string().contains("attentionMask: has 3 entries but there are 2 tokens"), "{err}");
    assert!(Centers::from_rows(2, 3, vec![0.0; 6]).unwrap_err().to_string().contains("row 0 has no direction"));
    assert!(Centers::from_rows(2, 3, vec![1.0; 5]).unwrap_err().to_string().contains("expected nClusters * dModel"));
}

/// Random activations with planted structure, some zero rows and a random mask.
fn random_case() -> impl Strategy<Value = (usize, usize, usize, usize, Vec<f32>, Vec<u8>, f64, f64, u64)> {
    (1usize..4, 1usize..40, 1usize..48, 1usize..12, prop::sample::select(vec![1e-4, 0.003, 0.05, 0.3, 1.0, 1e3, 1e7]), prop::sample::select(vec![0.0, 0.01, 0.2, 0.6, 0.99]), any::<u64>())
        .prop_flat_map(|(b, s, d, k, t, m, seed)| {
            let n = b * s;
            (
                Just(b), Just(s), Just(d), Just(k),
                prop::collection::vec(prop_oneof![8 => -4.0f32..4.0, 1 => Just(0.0f32)], n * d),
                prop::collection::vec(prop_oneof![4 => Just(1u8), 1 => Just(0u8)], n),
                Just(t), Just(m), Just(seed),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_match_reference((b, s, d, k, mut acts, mask, temperature, min_membership, seed) in random_case()) {
        // Every fifth token all zeros: skipped, no row.
        for t in (0..b * s).step_by(5) {
            acts[t * d..(t + 1) * d].iter_mut().for_each(|v| *v = 0.0);
        }
        let centers = Centers::from_rows(k, d, unit_rows(k, d, seed)).unwrap();
        let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: s, d, mask: Some(&mask) };
        let acts64: Vec<f64> = acts.iter().map(|&v| f64::from(v)).collect();
        for backend in &backends() {
            check_against_reference(backend, &tokens, &acts64, &centers, MembershipParams { temperature, min_membership });
        }
        let out = CpuBackend::default().run(&centers, &tokens, MembershipParams { temperature, min_membership }, ALL).unwrap();
        let real = mask.iter().filter(|&&m| m != 0).count();
        let zero_real = (0..b * s).filter(|&t| mask[t] != 0 && acts[t * d..(t + 1) * d].iter().all(|&v| v == 0.0)).count();
        prop_assert_eq!(out.rows.len(), real - zero_real);
        prop_assert_eq!(out.stats.unwrap().skipped as usize, zero_real);
        // Every row sums to 1 and keeps at least its maximum.
        let dense = out.dense.unwrap();
        for r in 0..out.rows.len() {
            let row = &dense[r * k..(r + 1) * k];
            prop_assert!((row.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-5);
            prop_assert!(row.iter().any(|&v| v > 0.0));
        }
    }
}

#[test]
fn only_the_maximum_survives_a_high_threshold() {
    // K = 50 similar centers, threshold 0.99: every row is one-hot on its best cosine.
    let (k, d) = (50, 16);
    let centers = Centers::from_rows(k, d, unit_rows(k, d, 5)).unwrap();
    let acts: Vec<f32> = unit_rows(200, d, 6);
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 200, d, mask: None };
    let out = CpuBackend::default().run(&centers, &tokens, MembershipParams { temperature: 1.0, min_membership: 0.99 }, ALL).unwrap();
    let dense = out.dense.unwrap();
    for r in 0..200 {
        let row = &dense[r * k..(r + 1) * k];
        let best = (0..k)
            .map(|c| (c, (0..d).map(|j| f64::from(acts[r * d + j]) * f64::from(centers.data[c * d + j])).sum::<f64>()))
            .fold((0, f64::NEG_INFINITY), |b, x| if x.1 > b.1 { x } else { b });
        assert_eq!(row.iter().filter(|&&v| v > 0.0).count(), 1);
        assert_eq!(row[best.0], 1.0);
    }
}

#[test]
fn tiny_temperatures_stay_within_tolerance_where_float32_cosines_would_not() {
    // Tokens close to two nearly parallel centers at D = 768: their cosines (~0.99) differ by
    // about the temperature, so an error of 1e-7 in a cosine would move memberships by ~1e-3.
    let d = 768;
    let u = unit_rows(1, d, 11);
    let w = unit_rows(1, d, 12);
    let delta = 2e-3f64;
    let c1: Vec<f32> = u.iter().zip(&w).map(|(&a, &b)| (f64::from(a) + delta * f64::from(b)) as f32).collect();
    let centers = Centers::from_rows(2, d, [u.clone(), c1].concat()).unwrap();
    let noise = unit_rows(400, d, 13);
    let acts: Vec<f32> = (0..400 * d).map(|i| 3.0 * (u[i % d] + 0.1 * noise[i])).collect();
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: 400, d, mask: None };
    let acts64: Vec<f64> = acts.iter().map(|&v| f64::from(v)).collect();
    for temperature in [1e-4, 1e-5] {
        let params = MembershipParams { temperature, min_membership: 0.0 };
        let out = CpuBackend::default().run(&centers, &tokens, params, Want { dense: true, ..Want::default() }).unwrap();
        let dense = out.dense.unwrap();
        let mut soft_rows = 0;
        for r in 0..400 {
            let want = reference_row(&acts64[r * d..(r + 1) * d], &centers.data, 2, temperature, 0.0);
            soft_rows += usize::from(want[0] > 0.01 && want[0] < 0.99);
            for c in 0..2 {
                assert!((f64::from(dense[r * 2 + c]) - want[c]).abs() <= TOL, "T={temperature} row {r}: {} vs {}", dense[r * 2 + c], want[c]);
            }
        }
        assert!(soft_rows > 20, "the case must exercise soft rows, got {soft_rows}");
    }
    check_against_reference(&CpuBackend::default(), &tokens, &acts64, &centers, MembershipParams { temperature: 1e-4, min_membership: 0.3 });
}

#[test]
fn tiny_temperatures_at_many_clusters_match_float64_from_half_precision_rows() {
    // The float64 finish at K = 300, D = 384 on float16 rows: clusters in groups of about 8 around
    // 40 directions, so each row has several cosines within the recomputed window of its maximum
    // (float64 products and exponentials) and most outside it (float32 exponentials).
    let (k, d, n) = (300, 384, 240);
    let directions = unit_rows(40, d, 21);
    let spread = unit_rows(k, d, 22);
    let centers: Vec<f32> = (0..k * d).map(|i| directions[(i / d) % 40 * d + i % d] + 0.15 * spread[i]).collect();
    let centers = Centers::from_rows(k, d, centers).unwrap();
    let noise = unit_rows(n, d, 23);
    let acts: Vec<half::f16> = (0..n * d).map(|i| half::f16::from_f32(3.0 * (directions[(i / d) % 40 * d + i % d] + 0.2 * noise[i]))).collect();
    let acts64: Vec<f64> = acts.iter().map(|v| v.to_f64()).collect();
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F16(&acts), seq_len: n, d, mask: None };
    for (temperature, min_membership) in [(0.004, 0.01), (0.012, 0.0), (0.012, 0.05)] {
        let params = MembershipParams { temperature, min_membership };
        // The case must exercise both sides of the window and soft rows.
        let (mut near, mut soft) = (0usize, 0usize);
        for r in 0..n {
            let a = &acts64[r * d..(r + 1) * d];
            let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
            let cos: Vec<f64> = (0..k).map(|c| (0..d).map(|j| a[j] * f64::from(centers.data[c * d + j])).sum::<f64>() / norm).collect();
            let max = cos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            near += cos.iter().filter(|&&c| max - c < 14.0 * temperature).count();
            let want = reference_row(a, &centers.data, k, temperature, min_membership);
            soft += usize::from(want.iter().copied().fold(0.0, f64::max) < 0.99);
        }
        assert!(near > 3 * n && near < n * k / 4, "T = {temperature}: {near} cosines near the maxima of {n} rows");
        assert!(soft > n / 10, "T = {temperature}: {soft} soft rows");
        for backend in &backends() {
            let compared = check_against_reference(backend, &tokens, &acts64, &centers, params);
            assert!(compared > n / 2, "T = {temperature}: {compared} rows compared");
        }
    }
}

#[test]
fn float64_rows_beyond_float32_range_keep_their_direction() {
    // Rows of 1e-50 and 1e200 (squares under- and overflow even in float64 for the latter).
    let acts = vec![1e-50f64, 0.0, 0.0, 1e200, -1e200, 0.0, 0.0, 0.0];
    let centers = Centers::from_rows(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    let tokens = Tokens { source: "activations", chunk_index: 0, first_row: 0, activations: ActivationsRef::F64(&acts), seq_len: 4, d: 2, mask: None };
    let out = CpuBackend::default().run(&centers, &tokens, MembershipParams { temperature: 0.01, min_membership: 0.0 }, ALL).unwrap();
    assert_eq!(out.rows.token, vec![0, 1, 2], "the all-zero row is skipped, the others are not");
    assert_eq!(out.stats.unwrap().skipped, 1);
    let dense = out.dense.unwrap();
    assert!((dense[0] - 1.0).abs() < 1e-6, "1e-50 points along the first axis: {:?}", &dense[..2]);
    assert!((dense[3] - 1.0).abs() < 1e-6, "(0, 1e200) along the second: {:?}", &dense[2..4]);
}
