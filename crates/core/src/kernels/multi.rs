//! Several devices as one `Backend` (`device: "cuda:all"`, `"cuda:0,1"`; docs/scaling.md "Every GPU
//! of a server"): each batch of tokens is dealt across the devices by whole sequences, each device
//! runs its share on its own thread, and the outputs are joined in sequence order; a pass keeps one
//! `Pass` per device and merges their statistics on the host through `PassStats::merge`, in device
//! order. Orchestration is generic over backends, so it is tested with several CPU backends.

use super::{Backend, Centers, MembershipParams, Pass, PassOutput, PreparedRows, SparseRows, Tokens, Want};
use crate::chunk::ActivationsRef;
use crate::error::{Error, Result};
use crate::pass::PassStats;

pub struct MultiBackend {
    devices: Vec<Box<dyn Backend>>,
}

impl MultiBackend {
    /// At least one device.
    pub fn new(devices: Vec<Box<dyn Backend>>) -> Self {
        assert!(!devices.is_empty(), "a multi-device backend needs a device");
        MultiBackend { devices }
    }

    pub fn devices(&self) -> usize {
        self.devices.len()
    }
}

/// The sequences `[first, end)` each of `parts` devices takes: contiguous, as even as whole
/// sequences allow, earlier parts one longer.
fn shares(sequences: usize, parts: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (sequences / parts, sequences % parts);
    let mut first = 0;
    (0..parts)
        .map(|p| {
            let end = first + base + usize::from(p < extra);
            let share = (first, end);
            first = end;
            share
        })
        .collect()
}

/// The tokens of sequences `[first, end)` of `tokens`; locations still count from the file's start.
fn sub_tokens<'a>(tokens: &Tokens<'a>, (first, end): (usize, usize)) -> Tokens<'a> {
    let (s, d) = (tokens.seq_len.max(1), tokens.d);
    let values = first * s * d..end * s * d;
    let activations = match tokens.activations {
        ActivationsRef::BF16(a) => ActivationsRef::BF16(&a[values]),
        ActivationsRef::F16(a) => ActivationsRef::F16(&a[values]),
        ActivationsRef::F32(a) => ActivationsRef::F32(&a[values]),
        ActivationsRef::F64(a) => ActivationsRef::F64(&a[values]),
    };
    Tokens { first_row: tokens.first_row + first, activations, mask: tokens.mask.map(|m| &m[first * s..end * s]), ..*tokens }
}

/// The devices' outputs, in sequence order, as one device would have returned them.
fn join(parts: Vec<(usize, PassOutput)>) -> PassOutput {
    let mut out = PassOutput::default();
    let mut sparse: Option<SparseRows> = None;
    let mut stats: Option<PassStats> = None;
    for (first_token, part) in parts {
        let rows: PreparedRows = part.rows;
        out.rows.token.extend(rows.token.iter().map(|&t| t + first_token as u32));
        out.rows.inv_norm.extend(rows.inv_norm);
        out.rows.skipped += rows.skipped;
        if let Some(d) = part.dense {
            out.dense.get_or_insert_with(Vec::new).extend(d);
        }
        if let Some(sp) = part.sparse {
            let all = sparse.get_or_insert_with(|| SparseRows { offset: vec![0], ..Default::default() });
            let base = all.cluster.len();
            all.offset.extend(sp.offset[1..].iter().map(|&o| o + base));
            all.cluster.extend(sp.cluster);
            all.value.extend(sp.value);
        }
        if let Some(st) = part.stats {
            match &mut stats {
                Some(all) => all.merge(st),
                None => stats = Some(st),
            }
        }
    }
    out.sparse = sparse;
    out.stats = stats;
    out
}

/// Runs `work(device, share)` for every device with a nonempty share, one thread each, and
/// returns the results with each share's first token, in device order. With fewer sequences
/// than devices (a `[T, D]` file is one sequence) the tokens are dealt one by one instead, as
/// sequences of length 1; an error's location is mapped back to (sequence, position).
fn on_every_device<T: Send>(tokens: &Tokens, devices: usize, work: impl Fn(usize, &Tokens) -> Result<T> + Sync) -> Result<Vec<(usize, T)>> {
    let s = tokens.seq_len.max(1);
    if tokens.n_tokens() / s < devices && s > 1 {
        let flat = Tokens { seq_len: 1, first_row: tokens.first_row * s, ..*tokens };
        return on_every_device(&flat, devices, work).map_err(|e| match e {
            Error::NonFinite { source_name, batch, .. } => Error::NonFinite { source_name, batch: batch / s, position: batch % s },
            other => other,
        });
    }
    let sequences = tokens.n_tokens() / s;
    let shares: Vec<(usize, (usize, usize))> = shares(sequences, devices).into_iter().enumerate().filter(|(_, (a, b))| b > a).collect();
    if shares.len() <= 1 {
        // One share (or none): no thread to start; device 0 takes everything, empty or not.
        return Ok(vec![(0, work(shares.first().map_or(0, |s| s.0), tokens)?)]);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&(device, share)| {
                let part = sub_tokens(tokens, share);
                let first_token = share.0 * tokens.seq_len.max(1);
                scope.spawn(move || work(device, &part).map(|r| (first_token, r)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

impl Backend for MultiBackend {
    fn name(&self) -> String {
        self.devices.iter().map(|d| d.name()).collect::<Vec<_>>().join("+")
    }

    fn run(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        super::check_shapes(centers, tokens)?;
        let parts = on_every_device(tokens, self.devices.len(), |device, part| self.devices[device].run(centers, part, params, want))?;
        Ok(join(parts))
    }

    fn begin_pass(&self, k: usize, d: usize, sums: bool) -> Box<dyn Pass + '_> {
        Box::new(MultiPass { passes: self.devices.iter().map(|b| std::sync::Mutex::new(b.begin_pass(k, d, sums))).collect() })
    }

    fn cosines(&self, rows: &[f32], others: &[f32], d: usize) -> Result<Vec<f32>> {
        // Rows dealt as sequences of one row each.
        let n = rows.len() / d.max(1);
        let tokens = Tokens { source: "cosines", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(rows), seq_len: 1, d, mask: None };
        let parts = on_every_device(&tokens, self.devices.len(), |device, part| {
            let ActivationsRef::F32(part) = part.activations else { unreachable!("built from f32 rows") };
            self.devices[device].cosines(part, others, d)
        })?;
        let mut out = Vec::with_capacity(n * others.len() / d.max(1));
        parts.into_iter().for_each(|(_, p)| out.extend(p));
        Ok(out)
    }

    fn host_bytes_for_pass(&self, k: usize, d: usize) -> f64 {
        self.devices.iter().map(|b| b.host_bytes_for_pass(k, d)).sum()
    }
}

/// One pass per device; each keeps its share's statistics until `finish` merges them.
struct MultiPass<'a> {
    // A device's pass is used by one thread at a time; the mutex lets the threads borrow them.
    passes: Vec<std::sync::Mutex<Box<dyn Pass + 'a>>>,
}

impl Pass for MultiPass<'_> {
    fn run(&mut self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        super::check_shapes(centers, tokens)?;
        let passes = &self.passes;
        let parts = on_every_device(tokens, passes.len(), |device, part| passes[device].lock().expect("a device's pass panicked").run(centers, part, params, want))?;
        Ok(join(parts))
    }

    fn n_rows(&self) -> u64 {
        self.passes.iter().map(|p| p.lock().expect("a device's pass panicked").n_rows()).sum()
    }

    fn finish(self: Box<Self>) -> Result<PassStats> {
        let mut stats: Option<PassStats> = None;
        for pass in self.passes {
            let s = pass.into_inner().expect("a device's pass panicked").finish()?;
            match &mut stats {
                Some(all) => all.merge(s),
                None => stats = Some(s),
            }
        }
        Ok(stats.expect("at least one device"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_long_sequence_is_dealt_by_tokens_and_errors_keep_their_place() {
        use crate::kernels::cpu::CpuBackend;
        use crate::kernels::Backend;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A [T, D] chunk is one sequence: three devices still take a share each.
        let (t, d) = (10, 2);
        let mut acts: Vec<f32> = (0..t * d).map(|i| 1.0 + i as f32).collect();
        let tokens = Tokens { source: "flat", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: t, d, mask: None };
        let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let parts = on_every_device(&tokens, 3, |device, part| {
            seen[device].fetch_add(part.n_tokens(), Ordering::Relaxed);
            Ok(part.first_row)
        })
        .unwrap();
        assert_eq!(seen.iter().map(|s| s.load(Ordering::Relaxed)).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!(parts, vec![(0, 0), (4, 4), (7, 7)]);
        // A NaN at token 8 is reported at sequence 0, position 8, as one device would.
        acts[8 * d] = f32::NAN;
        let tokens = Tokens { source: "flat", chunk_index: 0, first_row: 0, activations: ActivationsRef::F32(&acts), seq_len: t, d, mask: None };
        let centers = Centers::from_rows(1, d, vec![1.0, 0.0]).unwrap();
        let many = MultiBackend::new((0..3).map(|_| Box::new(CpuBackend::default()) as Box<dyn Backend>).collect());
        let params = MembershipParams { temperature: 1.0, min_membership: 0.0 };
        let err = many.run(&centers, &tokens, params, Want { sparse: true, ..Want::default() }).unwrap_err();
        let one = CpuBackend::default().run(&centers, &tokens, params, Want { sparse: true, ..Want::default() }).unwrap_err();
        assert_eq!(err.to_string(), one.to_string());
        assert!(err.to_string().contains("position 8"), "{err}");
    }

    #[test]
    fn shares_cover_every_sequence_once_as_evenly_as_possible() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 7), (7, 10)]);
        assert_eq!(shares(2, 3), vec![(0, 1), (1, 2), (2, 2)]);
        assert_eq!(shares(0, 2), vec![(0, 0), (0, 0)]);
    }
}
