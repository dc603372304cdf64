// The CUDA side of the membership formula (docs/algorithm.md "Memberships"), compiled at run time by NVRTC (no headers: NVRTC ships none by default).
// Each kernel mirrors a step of `kernels/cpu.rs`; the similarity and `P^T X` products are cuBLAS.
// Rows are handled one warp each: a row of K values stays in L1/L2 across the few passes the
// softmax needs, so the N x K matrix goes through device memory once in and once out.

typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu

// float16 bits to float32 without cuda_fp16.h.
__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// The CPU's exp for x <= 0 flushes below -87 to exactly 0 (so min_membership = 0 keeps the same
// nonzero pattern); expf agrees with it elsewhere to a few ulp.
__device__ __forceinline__ float exp_nonpositive(float x) {
    return x < -87.0f ? 0.0f : expf(x);
}

// bfloat16 bits: the upper half of a float32. A struct, so that overloads tell it from float16.
struct bf16_bits { unsigned short bits; };
__device__ __forceinline__ float bf16_to_float(bf16_bits h) { return __uint_as_float(((u32)h.bits) << 16); }

__device__ __forceinline__ float load_raw(const float *a, u32 i) { return a[i]; }
__device__ __forceinline__ float load_raw(const unsigned short *a, u32 i) { return half_to_float(a[i]); }
__device__ __forceinline__ float load_raw(const bf16_bits *a, u32 i) { return bf16_to_float(a[i]); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ u32 warp_sum_u(u32 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Largest value, first index on ties (as the CPU's `position(v == max)`).
__device__ __forceinline__ void warp_argmax(float &v, u32 &i) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        u32 oi = __shfl_xor_sync(FULL_MASK, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

__device__ __forceinline__ void warp_argmax_d(double &v, u32 &i) {
    for (int o = 16; o > 0; o >>= 1) {
        double ov = __shfl_xor_sync(FULL_MASK, v, o);
        u32 oi = __shfl_xor_sync(FULL_MASK, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

// x[r, :] = raw[r, :] * inv_norm[r], widened to float32. One block per row.
extern "C" __global__ void normalize_rows_f32(const float *raw, const double *inv_norm, float *x, u32 n_rows, u32 d) {
    u64 r = blockIdx.x;
    if (r >= n_rows) return;
    double scale = inv_norm[r];
    float s = (float)scale;
    if (s >= 1.17549435e-38f && s <= 3.40282347e38f) { // a normal float32 (inv_norm > 0)
        for (u32 i = threadIdx.x; i < d; i += blockDim.x) x[r * d + i] = raw[r * d + i] * s;
    } else {
        // A row of subnormals (or huge values): its scale is beyond float32's range.
        for (u32 i = threadIdx.x; i < d; i += blockDim.x) x[r * d + i] = (float)((double)raw[r * d + i] * scale);
    }
}

extern "C" __global__ void normalize_rows_f16(const unsigned short *raw, const double *inv_norm, float *x, u32 n_rows, u32 d) {
    u64 r = blockIdx.x;
    if (r >= n_rows) return;
    float s = (float)inv_norm[r];
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) x[r * d + i] = half_to_float(raw[r * d + i]) * s;
}

extern "C" __global__ void normalize_rows_bf16(const bf16_bits *raw, const double *inv_norm, float *x, u32 n_rows, u32 d) {
    u64 r = blockIdx.x;
    if (r >= n_rows) return;
    float s = (float)inv_norm[r];
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) x[r * d + i] = bf16_to_float(raw[r * d + i]) * s;
}

// The membership formula (docs/algorithm.md "Memberships") on each row of `p` in place (cosines in, memberships out), as `fused_softmax_scalar`:
// e = exp((c - max) / T); entries with e < min * sum(e) drop, except the largest; the rest are
// renormalized. Also writes, per row, the argmax, the best cosine, sum_k p_k cos_k and the
// number of nonzero memberships. One warp per row.
extern "C" __global__ void softmax_rows(float *p, u32 n_rows, u32 k, float inv_t, float min_m,
                                        u32 *argmax_out, float *best_out, float *objective_out, u32 *nnz_out) {
    u32 lane = threadIdx.x & 31;
    u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= n_rows) return;
    float *row = p + r * k;

    float max = __int_as_float(0xff800000);
    u32 arg = 0xffffffffu;
    for (u32 c = lane; c < k; c += 32) {
        float v = row[c];
        if (v > max) { max = v; arg = c; }
    }
    warp_argmax(max, arg);

    float sum = 0.0f;
    for (u32 c = lane; c < k; c += 32) sum += exp_nonpositive((row[c] - max) * inv_t);
    sum = warp_sum(sum);

    // p_k < min  <=>  e_k < min * sum; the largest entry (e = 1) always stays.
    float threshold = min_m * sum;
    float kept = 0.0f;
    for (u32 c = lane; c < k; c += 32) {
        float e = exp_nonpositive((row[c] - max) * inv_t);
        if (e >= threshold) kept += e;
    }
    kept = warp_sum(kept);
    bool forced = 1.0f < threshold;
    if (forced) kept += 1.0f;
    float inv_kept = 1.0f / kept;

    float objective = 0.0f;
    u32 nnz = 0;
    for (u32 c = lane; c < k; c += 32) {
        float cos = row[c];
        float e = exp_nonpositive((cos - max) * inv_t);
        float v = (e >= threshold || (forced && c == arg)) ? e * inv_kept : 0.0f;
        objective += v * cos;
        nnz += v > 0.0f;
        row[c] = v;
    }
    objective = warp_sum(objective);
    nnz = warp_sum_u(nnz);
    if (lane == 0) {
        argmax_out[r] = arg;
        best_out[r] = max;
        objective_out[r] = objective;
        nnz_out[r] = nnz;
    }
}

// The tiny-temperature path (`softmax_exact` in cpu.rs): cosines within `window` of the row's
// float32 maximum are recomputed in float64 from the raw activations, then the whole step runs in
// float64. `cos` is an n_rows x k float64 scratch. One warp per row.
template <typename Raw>
__device__ void softmax_rows_exact(float *p, const Raw *raw, const float *centers, const double *inv_norm,
                                   double *cos, u32 n_rows, u32 k, u32 d, double temperature, double min_m,
                                   double window, u32 *argmax_out, float *best_out, float *objective_out, u32 *nnz_out) {
    u32 lane = threadIdx.x & 31;
    u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= n_rows) return;
    float *row = p + r * k;
    double *crow = cos + r * k;
    const Raw *a = raw + r * d;

    float max32 = __int_as_float(0xff800000);
    for (u32 c = lane; c < k; c += 32) max32 = fmaxf(max32, row[c]);
    for (int o = 16; o > 0; o >>= 1) max32 = fmaxf(max32, __shfl_xor_sync(FULL_MASK, max32, o));

    for (u32 base = 0; base < k; base += 32) {
        u32 c = base + lane;
        bool near = c < k && (double)(max32 - row[c]) < window;
        if (c < k) crow[c] = (double)row[c];
        u32 todo = __ballot_sync(FULL_MASK, near);
        while (todo) {
            u32 j = base + __ffs(todo) - 1;
            todo &= todo - 1;
            const float *center = centers + (u64)j * d;
            double dot = 0.0;
            for (u32 i = lane; i < d; i += 32) dot += (double)load_raw(a, i) * (double)center[i];
            dot = warp_sum_d(dot);
            if (lane == 0) crow[j] = dot * inv_norm[r];
        }
    }
    __syncwarp();

    double max = __longlong_as_double(0xfff0000000000000ULL);
    u32 arg = 0xffffffffu;
    for (u32 c = lane; c < k; c += 32) {
        double v = crow[c];
        if (v > max) { max = v; arg = c; }
    }
    warp_argmax_d(max, arg);
    double inv_t = 1.0 / temperature;
    double sum = 0.0;
    for (u32 c = lane; c < k; c += 32) sum += exp((crow[c] - max) * inv_t);
    sum = warp_sum_d(sum);
    double threshold = min_m * sum;
    double kept = 0.0;
    for (u32 c = lane; c < k; c += 32) {
        double e = exp((crow[c] - max) * inv_t);
        if (e >= threshold || c == arg) kept += e;
    }
    kept = warp_sum_d(kept);
    double objective = 0.0;
    u32 nnz = 0;
    for (u32 c = lane; c < k; c += 32) {
        double e = exp((crow[c] - max) * inv_t);
        double v = (e >= threshold || c == arg) ? e / kept : 0.0;
        objective += v * crow[c];
        float v32 = (float)v;
        nnz += v32 > 0.0f;
        row[c] = v32;
    }
    objective = warp_sum_d(objective);
    nnz = warp_sum_u(nnz);
    if (lane == 0) {
        argmax_out[r] = arg;
        best_out[r] = (float)max;
        objective_out[r] = (float)objective;
        nnz_out[r] = nnz;
    }
}

extern "C" __global__ void softmax_rows_exact_f32(float *p, const float *raw, const float *centers, const double *inv_norm,
                                                  double *cos, u32 n_rows, u32 k, u32 d, double temperature, double min_m,
                                                  double window, u32 *argmax_out, float *best_out, float *objective_out, u32 *nnz_out) {
    softmax_rows_exact(p, raw, centers, inv_norm, cos, n_rows, k, d, temperature, min_m, window, argmax_out, best_out, objective_out, nnz_out);
}

extern "C" __global__ void softmax_rows_exact_f16(float *p, const unsigned short *raw, const float *centers, const double *inv_norm,
                                                  double *cos, u32 n_rows, u32 k, u32 d, double temperature, double min_m,
                                                  double window, u32 *argmax_out, float *best_out, float *objective_out, u32 *nnz_out) {
    softmax_rows_exact(p, raw, centers, inv_norm, cos, n_rows, k, d, temperature, min_m, window, argmax_out, best_out, objective_out, nnz_out);
}

extern "C" __global__ void softmax_rows_exact_bf16(float *p, const bf16_bits *raw, const float *centers, const double *inv_norm,
                                                   double *cos, u32 n_rows, u32 k, u32 d, double temperature, double min_m,
                                                   double window, u32 *argmax_out, float *best_out, float *objective_out, u32 *nnz_out) {
    softmax_rows_exact(p, raw, centers, inv_norm, cos, n_rows, k, d, temperature, min_m, window, argmax_out, best_out, objective_out, nnz_out);
}

// m_k += sum_r p[r, k], summed in float64. Thread per column, grid.y splits the rows.
extern "C" __global__ void column_sums(const float *p, u32 n_rows, u32 k, double *mass) {
    u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= k) return;
    u32 per = (n_rows + gridDim.y - 1) / gridDim.y;
    u32 start = blockIdx.y * per;
    u32 end = start + per < n_rows ? start + per : n_rows;
    double s = 0.0;
    for (u32 r = start; r < end; r++) s += (double)p[(u64)r * k + c];
    if (start < end) atomicAdd(&mass[c], s);
}

// The nonzero memberships of each row, in cluster order, at `offset[r]` (an exclusive prefix sum
// of the row counts). One warp per row.
extern "C" __global__ void compact_rows(const float *p, u32 n_rows, u32 k, const u64 *offset, u32 *cluster, float *value) {
    u32 lane = threadIdx.x & 31;
    u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= n_rows) return;
    const float *row = p + r * k;
    u64 at = offset[r];
    for (u32 base = 0; base < k; base += 32) {
        u32 c = base + lane;
        float v = c < k ? row[c] : 0.0f;
        u32 mask = __ballot_sync(FULL_MASK, v > 0.0f);
        if (v > 0.0f) {
            u64 pos = at + __popc(mask & ((1u << lane) - 1));
            cluster[pos] = c;
            value[pos] = v;
        }
        at += __popc(mask);
    }
}

// acc += src, widening to float64: a pass's S and m summed across chunks on the device.
extern "C" __global__ void accumulate_f32(const float *src, double *acc, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) acc[i] += (double)src[i];
}

extern "C" __global__ void accumulate_f64(const double *src, double *acc, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) acc[i] += src[i];
}
