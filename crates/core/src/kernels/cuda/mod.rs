//! The CUDA backend: the same `Backend` as the CPU path, on an NVIDIA GPU through `cudarc`.
//!
//! Libraries are loaded at run time (`dynamic-loading`), so the package builds and runs on
//! machines without CUDA: `open` looks for each library before touching it and turns every
//! absence or driver failure into `Error::Device` (never a panic).
//!
//! Per block of rows: the host gathers the real tokens into a pinned buffer in their stored
//! precision (float16 travels as float16), a copy stream uploads it while the compute stream
//! works on the previous block, `normalize_rows` widens and scales it, cuBLAS computes the cosines,
//! `softmax_rows` turns them into memberships in place (one trip of the `N x K` matrix through
//! memory), `column_sums` adds `m` and cuBLAS adds `P^T X` into `S`, which stays on the device
//! until the chunk is done. Sparse memberships are compacted on the device.

use super::cpu::{EXACT_BELOW_TEMPERATURE, EXACT_WINDOW};
use super::{check_shapes, prepare_rows, unit_row, Backend, Centers, MembershipParams, Pass, PassOutput, PreparedRows, SparseRows, Tokens, Want};
use crate::error::{Error, Result};
use crate::chunk::ActivationsRef;
use crate::pass::{Farthest, PassStats, RESEED_CANDIDATES};
use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// The kernels' source, compiled by NVRTC for the GPU at hand when a backend first opens it.
pub const KERNEL_SOURCE: &str = include_str!("kernels.cu");

/// Declares the kernels once: `KERNEL_NAMES` (what the compile test looks for in the PTX) and
/// `Kernels`, one loaded function per name.
macro_rules! kernels {
    ($($field:ident = $name:literal),* $(,)?) => {
        /// Every kernel `KERNEL_SOURCE` defines (the compile test checks each is in the PTX).
        pub const KERNEL_NAMES: &[&str] = &[$($name),*];

        struct Kernels {
            $($field: CudaFunction,)*
        }

        impl Kernels {
            /// Loads every kernel of `KERNEL_NAMES` from `module`; `missing` says which is absent.
            fn load(module: &Arc<CudaModule>, missing: impl Fn(&str, &dyn std::fmt::Debug) -> Error) -> Result<Kernels> {
                Ok(Kernels {
                    $($field: module.load_function($name).map_err(|e| missing($name, &e))?,)*
                })
            }
        }
    };
}

kernels! {
    normalize_f32 = "normalize_rows_f32",
    normalize_f16 = "normalize_rows_f16",
    normalize_bf16 = "normalize_rows_bf16",
    softmax = "softmax_rows",
    softmax_exact_f32 = "softmax_rows_exact_f32",
    softmax_exact_f16 = "softmax_rows_exact_f16",
    softmax_exact_bf16 = "softmax_rows_exact_bf16",
    column_sums = "column_sums",
    compact = "compact_rows",
    accumulate_f32 = "accumulate_f32",
    accumulate_f64 = "accumulate_f64",
}

/// Device memory for one block slot (two slots: one computes while the next uploads).
const SLOT_BYTES: usize = 512 << 20;
/// Rows per thread block of the warp-per-row kernels (8 warps).
const ROWS_PER_BLOCK: u32 = 8;

/// Compiles `KERNEL_SOURCE` to PTX for a virtual architecture such as `"compute_90"`.
pub fn compile_kernels(arch: &'static str) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(device_error("cuda", "NVRTC (libnvrtc.so) was not found; it compiles the CUDA kernels (install the CUDA toolkit, or pip's nvidia-cuda-nvrtc, and put its lib folder on LD_LIBRARY_PATH)"));
    }
    let opts = CompileOptions { arch: Some(arch), name: Some("soft_cluster_kernels.cu".into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, opts).map_err(|e| device_error("cuda", format!("NVRTC could not compile the kernels for {arch}: {e:?}")))
}

/// Whether NVRTC can be loaded (checked first: dynamic loading panics on a missing library).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// How many GPUs the driver lists (`device: "cuda:all"`); an `ERR_DEVICE` error without a driver
/// or without any GPU.
pub fn device_count() -> Result<usize> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(device_error("cuda:all", "the NVIDIA driver library (libcuda.so) was not found"));
    }
    let count = CudaContext::device_count().map_err(|e| device_error("cuda:all", format!("the driver could not list GPUs: {e:?}")))?;
    match count.max(0) as usize {
        0 => Err(device_error("cuda:all", "there are 0 CUDA devices")),
        n => Ok(n),
    }
}

fn device_error(device: &str, problem: impl Into<String>) -> Error {
    Error::Device { device: device.to_string(), problem: problem.into() }
}

/// An opened GPU: context, streams, cuBLAS handle, kernels and pinned staging buffers.
/// Shared by every backend on that GPU (opening compiles the kernels, so it happens once).
struct Gpu {
    name: String,
    workspace: Option<Workspace>,
    ctx: Arc<CudaContext>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    blas: CudaBlas,
    f: Kernels,
    staging: [Option<PinnedHostSlice<u8>>; 2],
}

type Shared = Arc<Mutex<Gpu>>;

fn opened() -> &'static Mutex<Vec<(usize, Shared)>> {
    static OPENED: OnceLock<Mutex<Vec<(usize, Shared)>>> = OnceLock::new();
    OPENED.get_or_init(|| Mutex::new(Vec::new()))
}

impl Gpu {
    fn open(ordinal: usize) -> Result<Gpu> {
        let name = format!("cuda:{ordinal}");
        let fail = |what: &str, e: &dyn std::fmt::Debug| device_error(&name, format!("{what}: {e:?}"));
        // SAFETY (the three checks): they only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(device_error(&name, "the NVIDIA driver library (libcuda.so) was not found"));
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(device_error(&name, "cuBLAS (libcublas.so) was not found; install the CUDA toolkit or pip's nvidia-cublas and put its lib folder on LD_LIBRARY_PATH"));
        }
        if !nvrtc_present() {
            return Err(device_error(&name, "NVRTC (libnvrtc.so) was not found; install the CUDA toolkit or pip's nvidia-cuda-nvrtc and put its lib folder on LD_LIBRARY_PATH"));
        }
        let count = CudaContext::device_count().map_err(|e| fail("the driver could not list GPUs", &e))?;
        if ordinal >= count.max(0) as usize {
            return Err(device_error(&name, format!("there {} {count} CUDA device{}", if count == 1 { "is" } else { "are" }, if count == 1 { "" } else { "s" })));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("could not create a context", &e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| fail("could not read the compute capability", &e))?;
        // CompileOptions wants a 'static arch; one string per opened GPU.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let ptx = compile_kernels(arch).map_err(|e| match e {
            Error::Device { problem, .. } => device_error(&name, problem),
            other => other,
        })?;
        let module = ctx.load_module(ptx).map_err(|e| fail("could not load the kernels", &e))?;
        let f = Kernels::load(&module, |n, e| fail(&format!("kernel {n} is missing"), e))?;
        let compute = ctx.new_stream().map_err(|e| fail("could not create a stream", &e))?;
        let copy = ctx.new_stream().map_err(|e| fail("could not create a stream", &e))?;
        let blas = CudaBlas::new(compute.clone()).map_err(|e| fail("could not start cuBLAS", &e))?;
        Ok(Gpu { name, workspace: None, ctx, compute, copy, blas, f, staging: [None, None] })
    }

    fn shared(ordinal: usize) -> Result<Shared> {
        let mut all = opened().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, gpu)) = all.iter().find(|(o, _)| *o == ordinal) {
            return Ok(gpu.clone());
        }
        let gpu = Arc::new(Mutex::new(Gpu::open(ordinal)?));
        all.push((ordinal, gpu.clone()));
        Ok(gpu)
    }
}

/// Similarity and `P^T X` products in float32, or on TF32 tensor cores (10-bit mantissa inputs:
/// cosines off by about 1e-3 relative, memberships by about 1e-3 / T).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    #[default]
    Float32,
    Tf32,
}

/// `S` and `m` of an open pass (`CudaPass`), summed in float64 on the device.
#[derive(Default)]
struct PassSums {
    s: Option<CudaSlice<f64>>,
    mass: Option<CudaSlice<f64>>,
    k: usize,
    d: usize,
}

pub struct CudaBackend {
    gpu: Shared,
    name: String,
    precision: MatmulPrecision,
    /// Rows per block; `None` sizes blocks to `SLOT_BYTES` (tests set it to exercise the pipeline).
    block_rows: Option<usize>,
}

impl CudaBackend {
    /// Opens GPU `ordinal` (compiling the kernels the first time), or says why it cannot.
    pub fn new(ordinal: usize, precision: MatmulPrecision) -> Result<Self> {
        Ok(CudaBackend { gpu: Gpu::shared(ordinal)?, name: format!("cuda:{ordinal}"), precision, block_rows: None })
    }

    /// The same backend with at most `rows` rows per block.
    pub fn with_block_rows(mut self, rows: usize) -> Self {
        self.block_rows = Some(rows.max(1));
        self
    }

    /// The GPU, locked, with its context current on this thread: with several GPUs
    /// (`kernels::multi`) each device's work runs on a thread of its own, and cuBLAS calls go to
    /// the thread's current context.
    fn locked(&self) -> Result<std::sync::MutexGuard<'_, Gpu>> {
        let gpu = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        gpu.ctx.bind_to_thread().map_err(|e| device_error(&gpu.name, format!("could not make its context current: {e:?}")))?;
        Ok(gpu)
    }

    /// The GPU's own name ("NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> String {
        let gpu = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        gpu.ctx.name().unwrap_or_else(|_| gpu.name.clone())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        self.run_in(None, centers, tokens, params, want)
    }

    fn begin_pass(&self, k: usize, d: usize, sums: bool) -> Box<dyn Pass + '_> {
        Box::new(CudaPass { backend: self, sums: sums.then(PassSums::default), stats: PassStats::sized(k, d, sums) })
    }

    /// The init sample is at most a few tens of thousands of rows: the host does it.
    fn cosines(&self, rows: &[f32], others: &[f32], d: usize) -> Result<Vec<f32>> {
        Ok(super::cpu::cosines_on_host(super::cpu::GemmCrate::default(), rows, others, d))
    }

    /// The host keeps `S` in float64 once per pass (downloaded from the device) plus the centers.
    fn host_bytes_for_pass(&self, k: usize, d: usize) -> f64 {
        (k * d) as f64 * (8.0 * 3.0 + 4.0 * 2.0)
    }
}

impl CudaBackend {
    /// A run; with `pass`, `S` and `m` are added to it on the device instead of being returned.
    fn run_in(&self, pass: Option<&mut PassSums>, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        check_shapes(centers, tokens)?;
        let started = std::time::Instant::now();
        let rows = prepare_rows(tokens)?;
        let prepared = started.elapsed();
        let mut gpu = self.locked()?;
        let name = gpu.name.clone();
        let mut job = Job::new(&mut gpu, self.precision, self.block_rows, pass, centers, tokens, &rows, params, want)
            .map_err(|e| device_error(&name, format!("{} (while preparing {})", e, tokens.source)))?;
        let set_up = started.elapsed();
        let out = job.run().map_err(|e| device_error(&name, format!("{} (while processing {})", e, tokens.source)));
        drop(job);
        let (dense, sparse, stats) = out?;
        if profiling() {
            eprintln!(
                "soft-cluster profile: {} rows={} prepare={:.1}ms setup={:.1}ms blocks+stats={:.1}ms",
                tokens.source, rows.len(), prepared.as_secs_f64() * 1e3, (set_up - prepared).as_secs_f64() * 1e3, (started.elapsed() - set_up).as_secs_f64() * 1e3
            );
        }
        Ok(PassOutput { rows, dense, sparse, stats })
    }
}

/// A pass on the GPU: `S` and `m` stay on the device until `finish`; the rest of each run's
/// statistics is merged on the host as it comes.
struct CudaPass<'a> {
    backend: &'a CudaBackend,
    /// `Some` when the pass sums `S`.
    sums: Option<PassSums>,
    stats: PassStats,
}

impl Pass for CudaPass<'_> {
    fn run(&mut self, centers: &Centers, tokens: &Tokens, params: MembershipParams, want: Want) -> Result<PassOutput> {
        let want = Want { stats: true, sums: self.sums.is_some(), ..want };
        let mut out = self.backend.run_in(self.sums.as_mut(), centers, tokens, params, want)?;
        self.stats.merge(out.stats.take().expect("stats were asked for"));
        Ok(out)
    }

    fn n_rows(&self) -> u64 {
        self.stats.n_rows
    }

    fn finish(self: Box<Self>) -> Result<PassStats> {
        let CudaPass { backend, sums, mut stats } = *self;
        let Some(PassSums { s: Some(s), mass: Some(mass), .. }) = sums else { return Ok(stats) };
        let gpu = backend.locked()?;
        let fail = |e: String| device_error(&gpu.name, e);
        let s = gpu.compute.clone_dtoh(&s).ctx("downloading S").map_err(fail)?;
        let mass = gpu.compute.clone_dtoh(&mass).ctx("downloading m").map_err(fail)?;
        gpu.compute.synchronize().ctx("the pass's kernels").map_err(fail)?;
        stats.s.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        stats.mass.iter_mut().zip(&mass).for_each(|(a, b)| *a += b);
        Ok(stats)
    }
}

/// Device time of the fused step on one block already on the GPU (normalize, the similarity
/// product, the softmax step, `m` and `P^T X`), for benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct FusedTiming {
    pub rows: usize,
    /// Median milliseconds per step over the repetitions.
    pub median_ms: f64,
    /// The two matrix products' floating-point operations per step (4 N K D).
    pub matmul_flops: f64,
}

impl CudaBackend {
    /// Times `reps` fused steps over the first block of `tokens` with device events.
    /// For `tools/gpu_fused_bench.rs`; it lives here because it drives the private `Job` (one
    /// block staged once, then only its kernels between two events), which the public
    /// `Backend::run` can not do: every run also gathers, uploads and downloads.
    pub fn time_fused_step(&self, centers: &Centers, tokens: &Tokens, params: MembershipParams, reps: usize) -> Result<FusedTiming> {
        check_shapes(centers, tokens)?;
        let rows = prepare_rows(tokens)?;
        let mut gpu = self.locked()?;
        let name = gpu.name.clone();
        let fail = |e: String| device_error(&name, e);
        let want = Want { stats: true, sums: true, ..Want::default() };
        let mut job = Job::new(&mut gpu, self.precision, self.block_rows, None, centers, tokens, &rows, params, want).map_err(fail)?;
        let n = job.block.min(rows.len());
        job.stage(0, 0..n).map_err(fail)?;
        let stream = job.gpu.compute.clone();
        let mut times = Vec::with_capacity(reps);
        for rep in 0..reps + 3 {
            let start = job.gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event").map_err(fail)?;
            let end = job.gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event").map_err(fail)?;
            start.record(&stream).ctx("recording an event").map_err(fail)?;
            job.launch(0, n).map_err(fail)?;
            end.record(&stream).ctx("recording an event").map_err(fail)?;
            end.synchronize().ctx("the fused step").map_err(fail)?;
            if rep >= 3 {
                times.push(f64::from(start.elapsed_ms(&end).ctx("reading an event").map_err(fail)?));
            }
        }
        times.sort_by(f64::total_cmp);
        let median_ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        Ok(FusedTiming { rows: n, median_ms, matmul_flops: 4.0 * n as f64 * centers.k as f64 * centers.d as f64 })
    }
}

/// `SOFT_CLUSTER_PROFILE=1` prints where each run's time goes (stderr), for tuning on a GPU.
fn profiling() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SOFT_CLUSTER_PROFILE").is_ok_and(|v| v == "1"))
}

/// Errors inside a job are strings until `run` names the device and the data.
type JobResult<T> = std::result::Result<T, String>;

trait Context<T> {
    fn ctx(self, what: &str) -> JobResult<T>;
}

impl<T, E: std::fmt::Debug> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> JobResult<T> {
        self.map_err(|e| format!("{what} failed: {e:?}"))
    }
}

/// What one block slot must hold.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlotShape {
    raw_bytes: usize,
    rows: usize,
    x: usize,
    p: usize,
    cos: usize,
}

impl SlotShape {
    fn holds(&self, need: &SlotShape) -> bool {
        self.raw_bytes >= need.raw_bytes && self.rows >= need.rows && self.x >= need.x && self.p >= need.p && self.cos >= need.cos
    }
}

/// One block's device buffers.
struct Slot {
    shape: SlotShape,
    raw: CudaSlice<u8>,
    inv_norm: CudaSlice<f64>,
    x: CudaSlice<f32>,
    p: CudaSlice<f32>,
    /// float64 cosines of the tiny-temperature path.
    cos: Option<CudaSlice<f64>>,
    argmax: CudaSlice<u32>,
    best: CudaSlice<f32>,
    objective: CudaSlice<f32>,
    nnz: CudaSlice<u32>,
}

impl Slot {
    fn new(stream: &Arc<CudaStream>, shape: SlotShape) -> JobResult<Slot> {
        // SAFETY (the uninitialized allocations): every element a kernel reads is written first
        // (uploads fill `raw` and `inv_norm`, kernels fill the rest before reading it).
        unsafe {
            Ok(Slot {
                shape,
                raw: stream.alloc::<u8>(shape.raw_bytes).ctx("allocating GPU memory")?,
                inv_norm: stream.alloc::<f64>(shape.rows).ctx("allocating GPU memory")?,
                x: stream.alloc::<f32>(shape.x).ctx("allocating GPU memory")?,
                p: stream.alloc::<f32>(shape.p).ctx("allocating GPU memory")?,
                cos: if shape.cos > 0 { Some(stream.alloc::<f64>(shape.cos).ctx("allocating GPU memory")?) } else { None },
                argmax: stream.alloc::<u32>(shape.rows).ctx("allocating GPU memory")?,
                best: stream.alloc::<f32>(shape.rows).ctx("allocating GPU memory")?,
                objective: stream.alloc::<f32>(shape.rows).ctx("allocating GPU memory")?,
                nnz: stream.alloc::<u32>(shape.rows).ctx("allocating GPU memory")?,
            })
        }
    }
}

/// Device buffers kept between runs (a fit calls `run` once per chunk and iteration: allocating
/// and freeing hundreds of MB each time costs more than the kernels). They only grow.
#[derive(Default)]
struct Workspace {
    slots: Vec<Slot>,
    centers: Option<CudaSlice<f32>>,
    s: Option<CudaSlice<f32>>,
    mass: Option<CudaSlice<f64>>,
}

/// `buf` with room for at least `len` elements, reallocated only when it has less.
fn grown<T: cudarc::driver::DeviceRepr>(stream: &Arc<CudaStream>, buf: &mut Option<CudaSlice<T>>, len: usize) -> JobResult<()> {
    if buf.as_ref().is_none_or(|b| b.len() < len) {
        *buf = None; // free the old one first
        // SAFETY: callers write the first `len` elements before reading them.
        *buf = Some(unsafe { stream.alloc::<T>(len.max(1)) }.ctx("allocating GPU memory")?);
    }
    Ok(())
}

struct Job<'a> {
    gpu: &'a mut Gpu,
    centers: &'a Centers,
    tokens: &'a Tokens<'a>,
    rows: &'a PreparedRows,
    params: MembershipParams,
    want: Want,
    raw: RawKind,
    /// The tiny-temperature path (float64 cosines near each row's maximum).
    exact: bool,
    block: usize,
    n_slots: usize,
    ws: Workspace,
    /// The open pass that `S` and `m` go to instead of the host, if any.
    pass: Option<&'a mut PassSums>,
    // Host results.
    dense: Option<Vec<f32>>,
    sparse: Option<SparseRows>,
    argmax: Vec<u32>,
    best: Vec<f32>,
    objective_sum: f64,
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        self.gpu.workspace = Some(std::mem::take(&mut self.ws));
    }
}

/// How a block's activations go up to the device: 16-bit floats as their bits (widened by the
/// normalize kernel), float32 as is, float64 narrowed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    BF16,
    F16,
    F32,
}

impl RawKind {
    fn of(activations: &ActivationsRef) -> Self {
        match activations {
            ActivationsRef::BF16(_) => RawKind::BF16,
            ActivationsRef::F16(_) => RawKind::F16,
            ActivationsRef::F32(_) | ActivationsRef::F64(_) => RawKind::F32,
        }
    }

    fn bytes(self) -> usize {
        match self {
            RawKind::BF16 | RawKind::F16 => 2,
            RawKind::F32 => 4,
        }
    }
}

impl<'a> Job<'a> {
    fn new(gpu: &'a mut Gpu, precision: MatmulPrecision, block_rows: Option<usize>, pass: Option<&'a mut PassSums>, centers: &'a Centers, tokens: &'a Tokens<'a>, rows: &'a PreparedRows, params: MembershipParams, want: Want) -> JobResult<Self> {
        let (n, k, d) = (rows.len(), centers.k, centers.d);
        let raw = RawKind::of(&tokens.activations);
        let exact = params.temperature < EXACT_BELOW_TEMPERATURE;
        let elem = raw.bytes();
        let per_row = d * elem + d * 4 + k * 4 + if exact { k * 8 } else { 0 } + 32;
        let block = block_rows.unwrap_or(SLOT_BYTES / per_row).clamp(1, n.max(1)).min(i32::MAX as usize / k.max(d));
        let mode = match precision {
            MatmulPrecision::Float32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            MatmulPrecision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: the handle is alive; the call only sets a flag on it.
        let status = unsafe { blas_sys::cublasSetMathMode(*gpu.blas.handle(), mode) };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(format!("setting cuBLAS's math mode failed: {status:?}"));
        }
        let stream = gpu.compute.clone();
        let mut ws = gpu.workspace.take().unwrap_or_default();
        grown(&stream, &mut ws.centers, k * d)?;
        stream.memcpy_htod(&centers.data, ws.centers.as_mut().expect("grown")).ctx("uploading the centers")?;
        let n_slots = if n > block { 2 } else { 1 };
        let need = SlotShape { raw_bytes: block * d * elem, rows: block, x: block * d, p: block * k, cos: if exact { block * k } else { 0 } };
        for i in 0..n_slots {
            match ws.slots.get(i) {
                Some(slot) if slot.shape.holds(&need) => {}
                _ => {
                    let shape = match ws.slots.get(i) {
                        // Grow to the larger of both, so alternating shapes do not reallocate forever.
                        Some(old) => SlotShape {
                            raw_bytes: old.shape.raw_bytes.max(need.raw_bytes),
                            rows: old.shape.rows.max(need.rows),
                            x: old.shape.x.max(need.x),
                            p: old.shape.p.max(need.p),
                            cos: old.shape.cos.max(need.cos),
                        },
                        None => need,
                    };
                    if i < ws.slots.len() {
                        ws.slots.truncate(i); // free before allocating
                    }
                    ws.slots.push(Slot::new(&stream, shape)?);
                }
            }
        }
        for i in 0..n_slots {
            let bytes = block * d * elem;
            if gpu.staging[i].as_ref().is_none_or(|s| s.len() < bytes) {
                gpu.staging[i] = None; // free the old one first
                // SAFETY: written by `stage` before any upload reads it.
                gpu.staging[i] = Some(unsafe { gpu.ctx.alloc_pinned::<u8>(bytes) }.ctx("allocating pinned host memory")?);
            }
        }
        let sums_wanted = want.stats && want.sums;
        if want.stats {
            grown(&stream, &mut ws.mass, k)?;
            stream.memset_zeros(&mut ws.mass.as_mut().expect("grown").slice_mut(..k)).ctx("clearing m")?;
        }
        if sums_wanted {
            grown(&stream, &mut ws.s, k * d)?;
            stream.memset_zeros(&mut ws.s.as_mut().expect("grown").slice_mut(..k * d)).ctx("clearing S")?;
        }
        // Only runs that compute `S` feed an open pass; others return their `m` as usual.
        let mut pass = if sums_wanted { pass } else { None };
        if let Some(sums) = pass.as_deref_mut() {
            if sums.s.is_none() {
                sums.s = Some(stream.alloc_zeros::<f64>(k * d).ctx("allocating GPU memory")?);
                sums.mass = Some(stream.alloc_zeros::<f64>(k).ctx("allocating GPU memory")?);
                (sums.k, sums.d) = (k, d);
            } else if (sums.k, sums.d) != (k, d) {
                return Err(format!("a pass changed shape from K = {}, D = {} to K = {k}, D = {d}", sums.k, sums.d));
            }
        }
        // Allocations are ordered on the compute stream; the copy stream uses them next.
        stream.synchronize().ctx("allocating GPU memory")?;
        Ok(Job {
            pass,
            gpu,
            centers,
            tokens,
            rows,
            params,
            want,
            raw,
            exact,
            block,
            n_slots,
            ws,
            dense: want.dense.then(|| vec![0f32; n * k]),
            sparse: want.sparse.then(|| SparseRows { offset: vec![0], ..Default::default() }),
            argmax: Vec::with_capacity(if want.stats { n } else { 0 }),
            best: Vec::with_capacity(if want.stats { n } else { 0 }),
            objective_sum: 0.0,
        })
    }

    fn run(&mut self) -> JobResult<(Option<Vec<f32>>, Option<SparseRows>, Option<PassStats>)> {
        let n = self.rows.len();
        let blocks: Vec<Range<usize>> = (0..n).step_by(self.block).map(|s| s..(s + self.block).min(n)).collect();
        if let Some(first) = blocks.first() {
            self.stage(0, first.clone())?;
        }
        for (i, range) in blocks.iter().enumerate() {
            self.launch(i % self.n_slots, range.len())?;
            // The next block goes up (host gather, then the copy stream) while this one computes.
            if let Some(next) = blocks.get(i + 1) {
                self.stage((i + 1) % self.n_slots, next.clone())?;
            }
            self.finish(i % self.n_slots, range.clone())?;
        }
        let stats = if self.want.stats { Some(self.stats()?) } else { None };
        Ok((self.dense.take(), self.sparse.take(), stats))
    }

    /// Gathers the block's real tokens into pinned memory in their stored precision and uploads
    /// them (and their inverse norms) on the copy stream.
    fn stage(&mut self, slot: usize, range: Range<usize>) -> JobResult<()> {
        let d = self.centers.d;
        let tokens = &self.rows.token[range.clone()];
        // The buffer's previous upload must be done before the host writes it again.
        self.gpu.copy.synchronize().ctx("waiting for the copy stream")?;
        let staging = self.gpu.staging[slot].as_mut().expect("staging allocated for every slot");
        let bytes = staging.as_mut_slice().ctx("waiting for the pinned buffer")?;
        // 16-bit floats go up as their bits and are widened on the device.
        let bits16 = |a: &[u16], bytes: &mut [u8]| {
            let dst: &mut [u16] = bytemuck::cast_slice_mut(&mut bytes[..tokens.len() * d * 2]);
            dst.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(out, &t)| {
                let t = t as usize;
                out.copy_from_slice(&a[t * d..(t + 1) * d]);
            });
        };
        match self.tokens.activations {
            ActivationsRef::BF16(a) => bits16(bytemuck::cast_slice(a), bytes),
            ActivationsRef::F16(a) => bits16(bytemuck::cast_slice(a), bytes),
            ActivationsRef::F32(a) => {
                let dst: &mut [f32] = bytemuck::cast_slice_mut(&mut bytes[..tokens.len() * d * 4]);
                dst.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(out, &t)| {
                    let t = t as usize;
                    out.copy_from_slice(&a[t * d..(t + 1) * d]);
                });
            }
            ActivationsRef::F64(a) => {
                let dst: &mut [f32] = bytemuck::cast_slice_mut(&mut bytes[..tokens.len() * d * 4]);
                dst.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(out, &t)| {
                    let t = t as usize;
                    out.iter_mut().zip(&a[t * d..(t + 1) * d]).for_each(|(o, &v)| *o = v as f32);
                });
            }
        }
        let copy = self.gpu.copy.clone();
        let elem = self.raw.bytes();
        let staging = self.gpu.staging[slot].as_ref().expect("staging allocated");
        let host = &staging.as_slice().ctx("reading the pinned buffer")?[..tokens.len() * d * elem];
        let s = &mut self.ws.slots[slot];
        // Asynchronous (the source is pinned); the compute stream waits for it through `raw`'s event.
        copy.memcpy_htod(host, &mut s.raw).ctx("uploading activations")?;
        copy.memcpy_htod(&self.rows.inv_norm[range], &mut s.inv_norm).ctx("uploading norms")?;
        Ok(())
    }

    /// Queues the block's kernels on the compute stream.
    fn launch(&mut self, slot: usize, rows: usize) -> JobResult<()> {
        let (k, d) = (self.centers.k as u32, self.centers.d as u32);
        let n = rows as u32;
        let stream = self.gpu.compute.clone();
        let f = &self.gpu.f;
        let Workspace { slots, centers: ws_centers, s: ws_s, mass: ws_mass } = &mut self.ws;
        let centers_dev = ws_centers.as_ref().expect("uploaded in new");
        let s = &mut slots[slot];
        let warp_rows = LaunchConfig { grid_dim: (n.div_ceil(ROWS_PER_BLOCK), 1, 1), block_dim: (32 * ROWS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 };

        let normalize = match self.raw {
            RawKind::BF16 => &f.normalize_bf16,
            RawKind::F16 => &f.normalize_f16,
            RawKind::F32 => &f.normalize_f32,
        };
        let cfg = LaunchConfig { grid_dim: (n, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument types match the kernel's signature; buffers hold `rows` rows.
        unsafe { stream.launch_builder(normalize).arg(&s.raw).arg(&s.inv_norm).arg(&mut s.x).arg(&n).arg(&d).launch(cfg) }.ctx("normalize_rows")?;

        // Row-major P[rows x K] = X[rows x D] C^T is column-major P^T = C X^T.
        let sim = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_T,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: k as i32, n: n as i32, k: d as i32,
            alpha: 1.0f32, lda: d as i32, ldb: d as i32, beta: 0.0f32, ldc: k as i32,
        };
        // SAFETY: the dimensions match the buffers' sizes.
        unsafe { self.gpu.blas.gemm(sim, centers_dev, &s.x, &mut s.p) }.ctx("cuBLAS similarity product")?;

        let (inv_t, min_m) = ((1.0 / self.params.temperature) as f32, self.params.min_membership as f32);
        // Decided by the temperature, never by what a reused slot happens to hold.
        match (self.exact, s.cos.as_mut()) {
            (true, None) => return Err("internal: a slot without float64 scratch for the exact path".into()),
            (false, _) => unsafe {
                stream.launch_builder(&f.softmax)
                    .arg(&mut s.p).arg(&n).arg(&k).arg(&inv_t).arg(&min_m)
                    .arg(&mut s.argmax).arg(&mut s.best).arg(&mut s.objective).arg(&mut s.nnz)
                    .launch(warp_rows)
            }
            .ctx("softmax_rows")
            .map(|_| ())?,
            (true, Some(cos)) => {
                let kernel = match self.raw {
                    RawKind::BF16 => &f.softmax_exact_bf16,
                    RawKind::F16 => &f.softmax_exact_f16,
                    RawKind::F32 => &f.softmax_exact_f32,
                };
                let (t, m) = (self.params.temperature, self.params.min_membership);
                let window = EXACT_WINDOW * t + 1e-5;
                unsafe {
                    stream.launch_builder(kernel)
                        .arg(&mut s.p).arg(&s.raw).arg(centers_dev).arg(&s.inv_norm).arg(cos)
                        .arg(&n).arg(&k).arg(&d).arg(&t).arg(&m).arg(&window)
                        .arg(&mut s.argmax).arg(&mut s.best).arg(&mut s.objective).arg(&mut s.nnz)
                        .launch(warp_rows)
                }
                .ctx("softmax_rows_exact")?;
            }
        }

        if let (true, Some(mass)) = (self.want.stats, ws_mass) {
            let split = n.div_ceil(256).clamp(1, 256);
            let cfg = LaunchConfig { grid_dim: (k.div_ceil(256), split, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            unsafe { stream.launch_builder(&f.column_sums).arg(&s.p).arg(&n).arg(&k).arg(mass).launch(cfg) }.ctx("column_sums")?;
        }
        if let (true, true, Some(s_dev)) = (self.want.stats, self.want.sums, ws_s) {
            // Row-major S[K x D] += P^T X is column-major S^T += X^T P.
            let acc = GemmConfig {
                transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
                transb: blas_sys::cublasOperation_t::CUBLAS_OP_T,
                m: d as i32, n: k as i32, k: n as i32,
                alpha: 1.0f32, lda: d as i32, ldb: k as i32, beta: 1.0f32, ldc: d as i32,
            };
            unsafe { self.gpu.blas.gemm(acc, &s.x, &s.p, s_dev) }.ctx("cuBLAS P^T X product")?;
        }
        Ok(())
    }

    /// Brings the block's results back: row summaries, then sparse and dense memberships.
    fn finish(&mut self, slot: usize, range: Range<usize>) -> JobResult<()> {
        let k = self.centers.k;
        let rows = range.len();
        let stream = self.gpu.compute.clone();
        let s = &mut self.ws.slots[slot];
        if self.want.stats {
            let mut argmax = vec![0u32; rows];
            let mut best = vec![0f32; rows];
            let mut objective = vec![0f32; rows];
            stream.memcpy_dtoh(&s.argmax.slice(..rows), &mut argmax).ctx("downloading results")?;
            stream.memcpy_dtoh(&s.best.slice(..rows), &mut best).ctx("downloading results")?;
            stream.memcpy_dtoh(&s.objective.slice(..rows), &mut objective).ctx("downloading results")?;
            stream.synchronize().ctx("the block's kernels")?;
            self.objective_sum += objective.iter().map(|&v| f64::from(v)).sum::<f64>();
            self.argmax.extend(argmax);
            self.best.extend(best);
        }
        if let Some(sparse) = self.sparse.as_mut() {
            let mut nnz = vec![0u32; rows];
            stream.memcpy_dtoh(&s.nnz.slice(..rows), &mut nnz).ctx("downloading results")?;
            stream.synchronize().ctx("the block's kernels")?;
            let mut offset = Vec::with_capacity(rows + 1);
            let mut total = 0u64;
            for &c in &nnz {
                offset.push(total);
                total += u64::from(c);
            }
            offset.push(total);
            let total = total as usize;
            if total > 0 {
                let offset_dev = stream.clone_htod(&offset).ctx("uploading offsets")?;
                // SAFETY: `compact_rows` writes every one of the `total` entries.
                let (mut cluster_dev, mut value_dev) = unsafe { (stream.alloc::<u32>(total).ctx("allocating GPU memory")?, stream.alloc::<f32>(total).ctx("allocating GPU memory")?) };
                let (n, k32) = (rows as u32, k as u32);
                let cfg = LaunchConfig { grid_dim: (n.div_ceil(ROWS_PER_BLOCK), 1, 1), block_dim: (32 * ROWS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 };
                unsafe { stream.launch_builder(&self.gpu.f.compact).arg(&s.p).arg(&n).arg(&k32).arg(&offset_dev).arg(&mut cluster_dev).arg(&mut value_dev).launch(cfg) }.ctx("compact_rows")?;
                let base = sparse.cluster.len();
                sparse.cluster.resize(base + total, 0);
                sparse.value.resize(base + total, 0.0);
                stream.memcpy_dtoh(&cluster_dev, &mut sparse.cluster[base..]).ctx("downloading memberships")?;
                stream.memcpy_dtoh(&value_dev, &mut sparse.value[base..]).ctx("downloading memberships")?;
            }
            let base = *sparse.offset.last().expect("offset starts with 0");
            sparse.offset.extend(offset[1..].iter().map(|&o| base + o as usize));
        }
        if let Some(dense) = self.dense.as_mut() {
            stream.memcpy_dtoh(&s.p.slice(..rows * k), &mut dense[range.start * k..range.end * k]).ctx("downloading memberships")?;
        }
        stream.synchronize().ctx("the block's kernels")?;
        Ok(())
    }

    /// The pass statistics: `S` and `m` from the device, the rest from the row summaries.
    fn stats(&mut self) -> JobResult<PassStats> {
        let (k, d) = (self.centers.k, self.centers.d);
        let stream = self.gpu.compute.clone();
        let mut stats = PassStats::without_sums(k, d);
        let ws_mass = self.ws.mass.as_ref().expect("stats wanted");
        if let Some(sums) = self.pass.as_deref_mut() {
            // Kept on the device for `finish_pass`: nothing K x D crosses the bus per chunk.
            let ws_s = self.ws.s.as_ref().expect("sums wanted");
            let (acc_s, acc_m) = (sums.s.as_mut().expect("allocated in new"), sums.mass.as_mut().expect("allocated in new"));
            let f = &self.gpu.f;
            let over = |len: usize| LaunchConfig { grid_dim: (len.div_ceil(256).min(1 << 16) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let (n_s, n_m) = ((k * d) as u64, k as u64);
            // SAFETY (both): each buffer holds at least the given number of elements.
            unsafe { stream.launch_builder(&f.accumulate_f32).arg(ws_s).arg(acc_s).arg(&n_s).launch(over(k * d)) }.ctx("accumulating S")?;
            unsafe { stream.launch_builder(&f.accumulate_f64).arg(ws_mass).arg(acc_m).arg(&n_m).launch(over(k)) }.ctx("accumulating m")?;
            stats.mass = vec![0.0; k];
        } else {
            if self.want.sums {
                let s32 = stream.clone_dtoh(&self.ws.s.as_ref().expect("sums wanted").slice(..k * d)).ctx("downloading S")?;
                stats.s = s32.par_iter().map(|&v| f64::from(v)).collect();
            }
            stats.mass = stream.clone_dtoh(&ws_mass.slice(..k)).ctx("downloading m")?;
            stream.synchronize().ctx("the pass's kernels")?;
        }
        for &a in &self.argmax {
            stats.hard_count[a as usize] += 1;
        }
        stats.objective_sum = self.objective_sum;
        stats.n_rows = self.rows.len() as u64;
        stats.skipped = self.rows.skipped;
        // The rows with the lowest best cosine, ties to the earliest, as the CPU path keeps them.
        let keep = RESEED_CANDIDATES.min(k);
        let mut order: Vec<usize> = (0..self.best.len()).collect();
        if order.len() > keep {
            order.select_nth_unstable_by(keep, |&a, &b| (self.best[a], a).partial_cmp(&(self.best[b], b)).expect("finite"));
            order.truncate(keep);
        }
        order.sort_by(|&a, &b| (self.best[a], a).partial_cmp(&(self.best[b], b)).expect("finite"));
        stats.farthest = order
            .into_iter()
            .map(|r| {
                let t = self.rows.token[r] as usize;
                let mut vector = vec![0f32; d];
                unit_row(self.tokens, t, self.rows.inv_norm[r], &mut vector);
                Farthest { best_cos: self.best[r], chunk: self.tokens.chunk_index, token: self.tokens.first_row * self.tokens.seq_len + t, vector }
            })
            .collect();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI installs NVRTC from PyPI and sets this, so a missing library fails there instead of skipping.
    fn nvrtc_required() -> bool {
        std::env::var("SOFT_CLUSTER_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
    }

    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        if !nvrtc_present() {
            assert!(!nvrtc_required(), "SOFT_CLUSTER_REQUIRE_NVRTC=1 but libnvrtc.so could not be loaded (LD_LIBRARY_PATH?)");
            // Straight to stderr: the harness captures `eprintln!` and shows it only on failure.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED every_kernel_compiles_with_nvrtc: NVRTC (libnvrtc.so) is not installed here; SOFT_CLUSTER_REQUIRE_NVRTC=1 makes this a failure");
            return;
        }
        // Hopper (the machines we benchmark on) and the oldest architecture we support.
        for arch in ["compute_90", "compute_75"] {
            let ptx = compile_kernels(arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for name in KERNEL_NAMES {
                assert!(text.contains(&format!(".entry {name}(")), "{name} missing from the PTX for {arch}");
            }
        }
    }
}
