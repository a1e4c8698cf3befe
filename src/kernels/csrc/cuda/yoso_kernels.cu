// CUDA kernels of the YOSO ops; semantics of src/kernels/reference.py.
//
// Plain CUDA C++ (no torch headers): compiles with `nvcc -c`. The host API is
// declared in yoso_kernels.cuh. Design notes:
// - Every kernel walks a flat index space with a grid-stride loop over int64
//   indices and every grid is a ceil-division capped at kMaxBlocks, so any
//   length and any head dim (1, 24, 100, ...) is covered, tails included.
// - Hash tables live in a caller-provided global workspace of at most
//   YOSO_TABLE_BUDGET_BYTES; keys are scattered into them with float32
//   atomicAdd and queries gather their bucket. Problems whose tables exceed
//   the budget are processed in chunks of columns, weight coordinates, hashes
//   and heads (in that order of preference).
// - The fast hash keeps its rotated vectors in shared memory and applies the
//   Walsh-Hadamard butterflies in the same order as the reference, so its
//   codes are bit-identical to the reference (products with +-1 are exact).
#include "yoso_kernels.cuh"

#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
// Target number of floats of shared memory per fast-hash block.
constexpr int64_t kFastHashTileElems = 2048;
constexpr int kMaxTau = YOSO_MAX_HASH_CODE_LEN;

inline unsigned int grid_for(int64_t work_items, int64_t per_block) {
  int64_t blocks = (work_items + per_block - 1) / per_block;  // ceil-div: keeps the tail
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned int>(blocks);
}

inline bool tau_ok(int tau) { return tau >= 1 && tau <= kMaxTau; }

inline int64_t clamp64(int64_t value, int64_t lo, int64_t hi) {
  return value < lo ? lo : (value > hi ? hi : value);
}

// ---------------------------------------------------------------------------
// Gaussian hash: one thread per (row, hash); tau dot products of length d.
// ---------------------------------------------------------------------------
__global__ void hash_gaussian_kernel(const float* __restrict__ x,
                                     const float* __restrict__ projection,
                                     int32_t* __restrict__ codes, int64_t bh, int64_t n,
                                     int64_t d, int64_t proj_cols, int64_t m, int tau) {
  const int64_t total = bh * n * m;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t h = e % m;
    const int64_t row = e / m;  // b * n + i
    const int64_t b = row / n;
    const float* xr = x + row * d;
    const float* p = projection + b * d * proj_cols + h * tau;
    float acc[kMaxTau];
#pragma unroll
    for (int t = 0; t < kMaxTau; ++t) acc[t] = 0.0f;
    for (int64_t k = 0; k < d; ++k) {
      const float xv = xr[k];
      const float* pk = p + k * proj_cols;
#pragma unroll
      for (int t = 0; t < kMaxTau; ++t) {
        if (t < tau) acc[t] = fmaf(xv, pk[t], acc[t]);
      }
    }
    int32_t code = 0;
#pragma unroll
    for (int t = 0; t < kMaxTau; ++t) {
      if (t < tau && acc[t] > 0.0f) code |= int32_t{1} << t;
    }
    codes[e] = code;
  }
}

// ---------------------------------------------------------------------------
// Fast hash: a block handles `rows` vectors (b, i, p) of `width` floats in
// shared memory; threads share the butterflies of all of them.
// ---------------------------------------------------------------------------
__global__ void hash_fast_kernel(const float* __restrict__ x, const float* __restrict__ signs,
                                 int32_t* __restrict__ codes, int64_t bh, int64_t n, int64_t d,
                                 int64_t parts, int log_width, int64_t m, int tau,
                                 int64_t rows) {
  extern __shared__ float y[];
  const int64_t width = int64_t{1} << log_width;
  const int64_t per_part = width / tau;
  const int64_t vectors = bh * n * parts;
  const int64_t tiles = (vectors + rows - 1) / rows;
  const int64_t elems = rows * width;
  const int64_t half = width / 2;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * rows;
    // y = D1 * pad(x)
    for (int64_t e = threadIdx.x; e < elems; e += blockDim.x) {
      const int64_t v = first + (e >> log_width);
      const int64_t k = e & (width - 1);
      float value = 0.0f;
      if (v < vectors) {
        const int64_t p = v % parts;
        const int64_t row = v / parts;
        const int64_t b = row / n;
        const float xv = k < d ? x[row * d + k] : 0.0f;
        value = xv * signs[((b * 3 + 0) * parts + p) * width + k];
      }
      y[e] = value;
    }
    __syncthreads();
    for (int level = 0; level < 3; ++level) {
      if (level > 0) {  // y = D_{level+1} * y
        for (int64_t e = threadIdx.x; e < elems; e += blockDim.x) {
          const int64_t v = first + (e >> log_width);
          if (v < vectors) {
            const int64_t p = v % parts;
            const int64_t b = (v / parts) / n;
            y[e] *= signs[((b * 3 + level) * parts + p) * width + (e & (width - 1))];
          }
        }
        __syncthreads();
      }
      // y = H y, butterflies of span h = 1, 2, 4, ... (reference order).
      for (int log_h = 0; log_h < log_width; ++log_h) {
        const int64_t h = int64_t{1} << log_h;
        for (int64_t q = threadIdx.x; q < rows * half; q += blockDim.x) {
          const int64_t r = q / half;
          const int64_t qq = q - r * half;
          const int64_t i0 = r * width + ((qq >> log_h) << (log_h + 1)) + (qq & (h - 1));
          const float u = y[i0];
          const float w = y[i0 + h];
          y[i0] = u + w;
          y[i0 + h] = u - w;
        }
        __syncthreads();
      }
    }
    for (int64_t it = threadIdx.x; it < rows * per_part; it += blockDim.x) {
      const int64_t r = it / per_part;
      const int64_t s = it - r * per_part;
      const int64_t v = first + r;
      if (v >= vectors) continue;
      const int64_t p = v % parts;
      const int64_t row = v / parts;
      const int64_t hash = p * per_part + s;
      if (hash >= m) continue;
      const float* bits = y + r * width + s * tau;
      int32_t code = 0;
      for (int t = 0; t < tau; ++t) {
        if (bits[t] > 0.0f) code |= int32_t{1} << t;
      }
      codes[row * m + hash] = code;
    }
    __syncthreads();  // y is reused by the next tile
  }
}

// ---------------------------------------------------------------------------
// Cumulations. Table chunk layout: [nb][nh][2**tau][na][nc] floats, for heads
// b0.., hashes h0.., weight coordinates a0.. and value columns c0...
// ---------------------------------------------------------------------------
struct Chunk {
  int64_t b0, nb, h0, nh, a0, na, c0, nc;
};

struct Plan {
  int64_t nb, nh, na, nc;
};

Plan make_plan(int64_t bh, int64_t m, int64_t w, int64_t dv, int tau) {
  const int64_t budget = static_cast<int64_t>(YOSO_TABLE_BUDGET_BYTES / sizeof(float));
  const int64_t buckets = int64_t{1} << tau;
  Plan plan;
  plan.nc = clamp64(budget / buckets, 1, dv);
  plan.na = clamp64(budget / (buckets * plan.nc), 1, w);
  plan.nh = clamp64(budget / (buckets * plan.nc * plan.na), 1, m);
  plan.nb = clamp64(budget / (buckets * plan.nc * plan.na * plan.nh), 1, bh);
  return plan;
}

template <bool kWeighted>
__global__ void scatter_kernel(const bool* __restrict__ key_mask,
                               const int32_t* __restrict__ key_codes,
                               const float* __restrict__ key_weight,
                               const float* __restrict__ value, float* __restrict__ table,
                               int64_t nk, int64_t m, int64_t w, int64_t dv, int tau,
                               Chunk chunk) {
  const int64_t total = chunk.nb * nk * chunk.na * chunk.nc;
  const int64_t row_width = chunk.na * chunk.nc;
  const uint32_t buckets = uint32_t{1} << tau;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % chunk.nc;
    int64_t t = e / chunk.nc;
    const int64_t a = t % chunk.na;
    t /= chunk.na;
    const int64_t j = t % nk;
    const int64_t bl = t / nk;
    const int64_t key = (chunk.b0 + bl) * nk + j;
    if (!key_mask[key]) continue;
    float v = value[key * dv + chunk.c0 + c];
    if (kWeighted) v *= key_weight[key * w + chunk.a0 + a];
    const int32_t* kc = key_codes + key * m + chunk.h0;
    float* base = table + ((bl * chunk.nh) << tau) * row_width + a * chunk.nc + c;
    for (int64_t h = 0; h < chunk.nh; ++h) {
      const uint32_t code = static_cast<uint32_t>(kc[h]);
      if (code >= buckets) continue;
      atomicAdd(base + ((h << tau) + code) * row_width, v);
    }
  }
}

template <bool kWeighted>
__global__ void gather_kernel(const bool* __restrict__ query_mask,
                              const int32_t* __restrict__ query_codes,
                              const float* __restrict__ query_weight,
                              const float* __restrict__ table, float* __restrict__ out,
                              int64_t nq, int64_t m, int64_t w, int64_t dv, int tau,
                              Chunk chunk, bool first, bool last, float inv_m) {
  const int64_t total = chunk.nb * nq * chunk.nc;
  const int64_t row_width = chunk.na * chunk.nc;
  const uint32_t buckets = uint32_t{1} << tau;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % chunk.nc;
    const int64_t t = e / chunk.nc;
    const int64_t i = t % nq;
    const int64_t bl = t / nq;
    const int64_t query = (chunk.b0 + bl) * nq + i;
    float* o = out + query * dv + chunk.c0 + c;
    if (!query_mask[query]) {
      if (first) *o = 0.0f;
      continue;
    }
    float acc = first ? 0.0f : *o;
    const int32_t* qc = query_codes + query * m + chunk.h0;
    const float* qw = kWeighted ? query_weight + query * w + chunk.a0 : nullptr;
    const float* base = table + ((bl * chunk.nh) << tau) * row_width + c;
    for (int64_t h = 0; h < chunk.nh; ++h) {
      const uint32_t code = static_cast<uint32_t>(qc[h]);
      if (code >= buckets) continue;
      const float* cell = base + ((h << tau) + code) * row_width;
      if (kWeighted) {
        for (int64_t a = 0; a < chunk.na; ++a) acc = fmaf(qw[a], cell[a * chunk.nc], acc);
      } else {
        acc += cell[0];
      }
    }
    if (last) acc *= inv_m;
    *o = acc;
  }
}

template <bool kWeighted>
cudaError_t run_cumulation(const bool* query_mask, const int32_t* query_codes,
                           const float* query_weight, const bool* key_mask,
                           const int32_t* key_codes, const float* key_weight,
                           const float* value, float* out, void* workspace, int64_t bh,
                           int64_t nq, int64_t nk, int64_t m, int64_t w, int64_t dv, int tau,
                           cudaStream_t stream) {
  if (!tau_ok(tau) || bh < 0 || nq < 0 || nk < 0 || m < 1 || w < 0 || dv < 0) {
    return cudaErrorInvalidValue;
  }
  if (bh == 0 || nq == 0 || dv == 0) return cudaSuccess;
  if (w == 0 || nk == 0) {  // nothing collides (or no weights): the output is zero
    return cudaMemsetAsync(out, 0, static_cast<size_t>(bh * nq * dv) * sizeof(float), stream);
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  const Plan plan = make_plan(bh, m, w, dv, tau);
  float* table = static_cast<float*>(workspace);
  const float inv_m = 1.0f / static_cast<float>(m);
  for (int64_t c0 = 0; c0 < dv; c0 += plan.nc) {
    for (int64_t b0 = 0; b0 < bh; b0 += plan.nb) {
      for (int64_t a0 = 0; a0 < w; a0 += plan.na) {
        for (int64_t h0 = 0; h0 < m; h0 += plan.nh) {
          Chunk chunk;
          chunk.b0 = b0;
          chunk.nb = b0 + plan.nb <= bh ? plan.nb : bh - b0;
          chunk.h0 = h0;
          chunk.nh = h0 + plan.nh <= m ? plan.nh : m - h0;
          chunk.a0 = a0;
          chunk.na = a0 + plan.na <= w ? plan.na : w - a0;
          chunk.c0 = c0;
          chunk.nc = c0 + plan.nc <= dv ? plan.nc : dv - c0;
          const int64_t table_elems = (chunk.nb * chunk.nh * chunk.na * chunk.nc) << tau;
          cudaError_t err = cudaMemsetAsync(
              table, 0, static_cast<size_t>(table_elems) * sizeof(float), stream);
          if (err != cudaSuccess) return err;
          const int64_t scatter_items = chunk.nb * nk * chunk.na * chunk.nc;
          scatter_kernel<kWeighted><<<grid_for(scatter_items, kThreads), kThreads, 0, stream>>>(
              key_mask, key_codes, key_weight, value, table, nk, m, w, dv, tau, chunk);
          err = cudaGetLastError();
          if (err != cudaSuccess) return err;
          const bool first = a0 == 0 && h0 == 0;
          const bool last = a0 + chunk.na == w && h0 + chunk.nh == m;
          const int64_t gather_items = chunk.nb * nq * chunk.nc;
          gather_kernel<kWeighted><<<grid_for(gather_items, kThreads), kThreads, 0, stream>>>(
              query_mask, query_codes, query_weight, table, out, nq, m, w, dv, tau, chunk,
              first, last, inv_m);
          err = cudaGetLastError();
          if (err != cudaSuccess) return err;
        }
      }
    }
  }
  return cudaSuccess;
}

}  // namespace

extern "C" {

cudaError_t yoso_hash_gaussian(const float* x, const float* projection, int32_t* codes,
                               int64_t bh, int64_t n, int64_t d, int64_t proj_cols, int tau,
                               cudaStream_t stream) {
  if (!tau_ok(tau) || bh < 0 || n < 0 || d < 0 || proj_cols < 0) return cudaErrorInvalidValue;
  const int64_t m = proj_cols / tau;
  const int64_t total = bh * n * m;
  if (total == 0) return cudaSuccess;
  hash_gaussian_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
      x, projection, codes, bh, n, d, proj_cols, m, tau);
  return cudaGetLastError();
}

cudaError_t yoso_hash_fast(const float* x, const float* signs, int32_t* codes, int64_t bh,
                           int64_t n, int64_t d, int64_t parts, int64_t width, int64_t m,
                           int tau, cudaStream_t stream) {
  if (!tau_ok(tau) || bh < 0 || n < 0 || d < 0 || parts < 0 || m < 0 || width < 1) {
    return cudaErrorInvalidValue;
  }
  int log_width = 0;
  while ((int64_t{1} << log_width) < width) ++log_width;
  const int64_t needed = d > tau ? d : tau;
  // width must be the smallest power of two >= max(d, tau).
  const bool minimal = width >= needed && (width == 1 || width / 2 < needed);
  if ((int64_t{1} << log_width) != width || !minimal) {
    return cudaErrorInvalidValue;
  }
  if (parts * (width / tau) < m) return cudaErrorInvalidValue;
  if (bh * n * m == 0) return cudaSuccess;
  const int64_t rows = width >= kFastHashTileElems ? 1 : kFastHashTileElems / width;
  const size_t smem = static_cast<size_t>(rows * width) * sizeof(float);
  if (smem > 48 * 1024) {
    int device = 0;
    int optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidConfiguration;
    err = cudaFuncSetAttribute(hash_fast_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t tiles = (bh * n * parts + rows - 1) / rows;
  hash_fast_kernel<<<grid_for(tiles, 1), kThreads, smem, stream>>>(
      x, signs, codes, bh, n, d, parts, log_width, m, tau, rows);
  return cudaGetLastError();
}

size_t yoso_lsh_cumulation_workspace_bytes(int64_t bh, int64_t m, int64_t weight_dim,
                                           int64_t dv, int tau) {
  if (!tau_ok(tau) || bh < 1 || m < 1 || weight_dim < 1 || dv < 1) return 0;
  const Plan plan = make_plan(bh, m, weight_dim, dv, tau);
  return static_cast<size_t>((plan.nb * plan.nh * plan.na * plan.nc) << tau) * sizeof(float);
}

cudaError_t yoso_lsh_cumulation(const bool* query_mask, const int32_t* query_codes,
                                const bool* key_mask, const int32_t* key_codes,
                                const float* value, float* out, void* workspace, int64_t bh,
                                int64_t nq, int64_t nk, int64_t m, int64_t dv, int tau,
                                cudaStream_t stream) {
  return run_cumulation<false>(query_mask, query_codes, nullptr, key_mask, key_codes, nullptr,
                               value, out, workspace, bh, nq, nk, m, 1, dv, tau, stream);
}

cudaError_t yoso_lsh_weighted_cumulation(const bool* query_mask, const int32_t* query_codes,
                                         const float* query_weight, const bool* key_mask,
                                         const int32_t* key_codes, const float* key_weight,
                                         const float* value, float* out, void* workspace,
                                         int64_t bh, int64_t nq, int64_t nk, int64_t m,
                                         int64_t w, int64_t dv, int tau, cudaStream_t stream) {
  return run_cumulation<true>(query_mask, query_codes, query_weight, key_mask, key_codes,
                              key_weight, value, out, workspace, bh, nq, nk, m, w, dv, tau,
                              stream);
}

}  // extern "C"
