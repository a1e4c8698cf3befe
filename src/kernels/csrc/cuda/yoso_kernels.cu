// CUDA kernels of the YOSO ops; semantics of src/kernels/reference.py.
//
// Plain CUDA C++ (no torch headers): compiles with `nvcc -c`. The host API is
// declared in yoso_kernels.cuh. Design notes:
// - Every kernel walks a flat index space with a grid-stride loop over int64
//   indices and every grid is a ceil-division capped at kMaxBlocks, so any
//   length and any head dim (1, 24, 100, ...) is covered, tails included.
// - The forward cumulation's hash tables live in shared memory when they fit
//   (shared_cumulation_kernel: a block owns one head, a group of hashes and a
//   slice of value columns; see choose_shared_plan for the rule). Otherwise
//   they live in a caller-provided global workspace of at most
//   YOSO_TABLE_BUDGET_BYTES; keys are scattered into them with float32
//   atomicAdd and queries gather their bucket. Problems whose tables exceed
//   the budget are processed in chunks of columns, hashes and heads (in that
//   order of preference).
// - The Gaussian hash is a GEMM (in the binding) followed by
//   pack_sign_bits_kernel, which packs the projections' sign bits into codes.
// - The fast hash keeps its rotated vectors in shared memory and applies the
//   Walsh-Hadamard butterflies in the same order as the reference, so its
//   codes are bit-identical to the reference (products with +-1 are exact).
#include "yoso_kernels.cuh"

#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 256;
// Largest grid of any launch (kernels stride over the rest). The CPU emulator
// builds with a small YOSO_MAX_BLOCKS so that every grid-stride loop runs
// several rounds.
#ifndef YOSO_MAX_BLOCKS
#define YOSO_MAX_BLOCKS (int64_t{1} << 20)
#endif
constexpr int64_t kMaxBlocks = YOSO_MAX_BLOCKS;
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

__host__ __device__ inline int64_t clamp64(int64_t value, int64_t lo, int64_t hi) {
  return value < lo ? lo : (value > hi ? hi : value);
}

// ---------------------------------------------------------------------------
// Gaussian hash, packing step. The binding computes the projections of all m
// hashes with one GEMM (at::bmm); this kernel turns their signs into codes:
// codes[e] = sum_t [projected[e * tau + t] > 0] << t over the flat code index
// e of [rows, m]. A block stages the tau floats of blockDim.x consecutive codes
// as sign bytes in shared memory, consecutive lanes loading consecutive floats
// (coalesced), then every thread packs its own code and the block stores the
// codes with consecutive lanes.
// ---------------------------------------------------------------------------
__global__ void pack_sign_bits_kernel(const float* __restrict__ projected,
                                      int32_t* __restrict__ codes, int64_t total, int tau) {
  extern __shared__ float pack_shared[];
  unsigned char* positive = reinterpret_cast<unsigned char*>(pack_shared);
  const int64_t per_tile = blockDim.x;
  const int64_t tiles = (total + per_tile - 1) / per_tile;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * per_tile;
    const int64_t count = clamp64(total - first, 0, per_tile);
    const float* src = projected + first * tau;
    for (int64_t f = threadIdx.x; f < count * tau; f += blockDim.x) {
      positive[f] = src[f] > 0.0f ? 1 : 0;  // NaN and -0 give 0, as in the reference
    }
    __syncthreads();
    if (static_cast<int64_t>(threadIdx.x) < count) {
      const unsigned char* bits = positive + static_cast<int64_t>(threadIdx.x) * tau;
      int32_t code = 0;
      for (int t = 0; t < tau; ++t) code |= static_cast<int32_t>(bits[t]) << t;
      codes[first + threadIdx.x] = code;
    }
    __syncthreads();  // the sign bytes are reused by the next tile
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
// Cumulation. Table chunk layout: [nb][nh][2**tau][nc] floats, for heads b0..,
// hashes h0.. and value columns c0...
// ---------------------------------------------------------------------------
struct Chunk {
  int64_t b0, nb, h0, nh, c0, nc;
};

struct Plan {
  int64_t nb, nh, nc;
};

Plan make_plan(int64_t bh, int64_t m, int64_t dv, int tau) {
  const int64_t budget = static_cast<int64_t>(YOSO_TABLE_BUDGET_BYTES / sizeof(float));
  const int64_t buckets = int64_t{1} << tau;
  Plan plan;
  plan.nc = clamp64(budget / buckets, 1, dv);
  plan.nh = clamp64(budget / (buckets * plan.nc), 1, m);
  plan.nb = clamp64(budget / (buckets * plan.nc * plan.nh), 1, bh);
  return plan;
}

__global__ void scatter_kernel(const bool* __restrict__ key_mask,
                               const int32_t* __restrict__ key_codes,
                               const float* __restrict__ value, float* __restrict__ table,
                               int64_t nk, int64_t m, int64_t dv, int tau, Chunk chunk) {
  const int64_t total = chunk.nb * nk * chunk.nc;
  const uint32_t buckets = uint32_t{1} << tau;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % chunk.nc;
    const int64_t t = e / chunk.nc;
    const int64_t j = t % nk;
    const int64_t bl = t / nk;
    const int64_t key = (chunk.b0 + bl) * nk + j;
    if (!key_mask[key]) continue;
    const float v = value[key * dv + chunk.c0 + c];
    const int32_t* kc = key_codes + key * m + chunk.h0;
    float* base = table + ((bl * chunk.nh) << tau) * chunk.nc + c;
    for (int64_t h = 0; h < chunk.nh; ++h) {
      const uint32_t code = static_cast<uint32_t>(kc[h]);
      if (code >= buckets) continue;
      atomicAdd(base + ((h << tau) + code) * chunk.nc, v);
    }
  }
}

__global__ void gather_kernel(const bool* __restrict__ query_mask,
                              const int32_t* __restrict__ query_codes,
                              const float* __restrict__ table, float* __restrict__ out,
                              int64_t nq, int64_t m, int64_t dv, int tau, Chunk chunk, bool first,
                              bool last, float inv_m) {
  const int64_t total = chunk.nb * nq * chunk.nc;
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
    const float* base = table + ((bl * chunk.nh) << tau) * chunk.nc + c;
    for (int64_t h = 0; h < chunk.nh; ++h) {
      const uint32_t code = static_cast<uint32_t>(qc[h]);
      if (code >= buckets) continue;
      acc += base[((h << tau) + code) * chunk.nc];
    }
    if (last) acc *= inv_m;
    *o = acc;
  }
}

// ---------------------------------------------------------------------------
// Cumulation with the tables in shared memory. A block owns one unit: a head b,
// a group of `group` hashes h0.. and a slice of `slice` value columns c0..; its
// tables, [group][2**tau][slice] floats, are its dynamic shared memory. It
// zeroes them, scatters the head's unmasked keys into them with shared-memory
// atomics, waits for the whole block, then each (query, column) sums its rows
// across the group's hashes and writes the output once:
// - one group (every hash in one block): a plain store of sum * inv_m, the same
//   arithmetic as gather_kernel, and masked queries get 0;
// - several groups: one global atomicAdd of (group's sum) * inv_m into an
//   output the launcher zeroed; masked queries are left at 0.
// Codes outside [0, 2**tau) collide with nothing.
// ---------------------------------------------------------------------------
constexpr int kSharedCumulationThreads = 512;
// Narrowest column slice the shared path accepts (unless dv is smaller). Each
// slice reads the codes again; below 8 columns a code read serves fewer than 8
// table updates, and the cost model (docs/kernels.md) no longer predicts a gain
// over the global tables.
constexpr int64_t kMinSliceColumns = 8;
// Dynamic shared memory a kernel may use without cudaFuncSetAttribute.
constexpr int64_t kDefaultDynamicSharedBytes = 48 * 1024;

__global__ void shared_cumulation_kernel(const bool* __restrict__ query_mask,
                                         const int32_t* __restrict__ query_codes,
                                         const bool* __restrict__ key_mask,
                                         const int32_t* __restrict__ key_codes,
                                         const float* __restrict__ value, float* __restrict__ out,
                                         int64_t bh, int64_t nq, int64_t nk, int64_t m,
                                         int64_t dv, int tau, int64_t group, int64_t slice,
                                         float inv_m) {
  extern __shared__ float tables[];
  const int64_t groups = (m + group - 1) / group;
  const int64_t slices = (dv + slice - 1) / slice;
  const int64_t units = bh * groups * slices;
  const bool single = groups == 1;  // each output element has one writer: plain stores
  const uint32_t buckets = uint32_t{1} << tau;
  const int64_t tid = threadIdx.x;
  const int64_t nt = blockDim.x;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const int64_t s = unit % slices;
    const int64_t g = (unit / slices) % groups;
    const int64_t b = unit / (slices * groups);
    const int64_t c0 = s * slice;
    const int64_t nc = clamp64(dv - c0, 0, slice);
    const int64_t h0 = g * group;
    const int64_t nh = clamp64(m - h0, 0, group);
    const int64_t elems = (nh * nc) << tau;  // tables of this unit: [nh][2**tau][nc]
    for (int64_t e = tid; e < elems; e += nt) tables[e] = 0.0f;
    __syncthreads();  // zeroed before any key is added
    // Consecutive lanes take consecutive columns of one key: coalesced value reads,
    // and its codes are one broadcast load per hash.
    for (int64_t e = tid; e < nk * nc; e += nt) {
      const int64_t j = e / nc;
      const int64_t c = e - j * nc;
      const int64_t key = b * nk + j;
      if (!key_mask[key]) continue;
      const float v = value[key * dv + c0 + c];
      const int32_t* kc = key_codes + key * m + h0;
      for (int64_t h = 0; h < nh; ++h) {
        const uint32_t code = static_cast<uint32_t>(kc[h]);
        if (code >= buckets) continue;
        atomicAdd(&tables[((h << tau) + code) * nc + c], v);
      }
    }
    __syncthreads();  // the tables are complete before any query reads them
    for (int64_t e = tid; e < nq * nc; e += nt) {
      const int64_t i = e / nc;
      const int64_t c = e - i * nc;
      const int64_t query = b * nq + i;
      float* o = out + query * dv + c0 + c;
      if (!query_mask[query]) {
        if (single) *o = 0.0f;
        continue;
      }
      const int32_t* qc = query_codes + query * m + h0;
      float acc = 0.0f;
      for (int64_t h = 0; h < nh; ++h) {
        const uint32_t code = static_cast<uint32_t>(qc[h]);
        if (code >= buckets) continue;
        acc += tables[((h << tau) + code) * nc + c];
      }
      if (single) {
        *o = acc * inv_m;
      } else {
        atomicAdd(o, acc * inv_m);
      }
    }
    __syncthreads();  // every query has read the tables before the next unit zeroes them
  }
}

// Which cumulation path runs, and the shared path's shape. The rule, for a
// device whose blocks may opt in to `limit_bytes` of dynamic shared memory
// (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KiB on an H100):
// 1. one hash's full table (2**tau x dv floats) fits: shared path, every slice
//    is all dv columns, and a group holds as many hashes as fit (at most m);
// 2. else a slice of at least min(dv, kMinSliceColumns) columns of one hash's
//    table fits: shared path, one hash per group, the widest slices that fit;
// 3. else (tau 13 and above at dv >= 8 on an H100): the global tables.
// Groups and slices are balanced: ceil(m / most) groups of ceil(m / groups)
// hashes, and likewise for the columns.
struct SharedPlan {
  bool use;
  int64_t group, slice, groups, slices;
  size_t bytes;        // dynamic shared memory per block
  int64_t limit_bytes; // the device's opt-in limit
};

SharedPlan choose_shared_plan(int64_t m, int64_t dv, int tau, int64_t limit_bytes) {
  SharedPlan plan{false, 0, 0, 0, 0, 0, limit_bytes};
  const int64_t fit_columns = (limit_bytes / static_cast<int64_t>(sizeof(float))) >> tau;
  const int64_t min_slice = dv < kMinSliceColumns ? dv : kMinSliceColumns;
  if (m < 1 || dv < 1 || fit_columns < min_slice) return plan;
  int64_t most_hashes = 1;
  int64_t most_columns = dv;
  if (fit_columns >= dv) {
    most_hashes = clamp64(fit_columns / dv, 1, m);
  } else {
    most_columns = fit_columns;
  }
  plan.groups = (m + most_hashes - 1) / most_hashes;
  plan.group = (m + plan.groups - 1) / plan.groups;
  plan.groups = (m + plan.group - 1) / plan.group;
  plan.slices = (dv + most_columns - 1) / most_columns;
  plan.slice = (dv + plan.slices - 1) / plan.slices;
  plan.slices = (dv + plan.slice - 1) / plan.slice;
  plan.bytes = static_cast<size_t>((plan.group * plan.slice) << tau) * sizeof(float);
  plan.use = true;
  return plan;
}

// The dynamic shared memory a block of the current device may opt in to.
cudaError_t device_optin_bytes(int* optin) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

// The plan for the current device.
cudaError_t device_shared_plan(int64_t m, int64_t dv, int tau, SharedPlan* plan) {
  int optin = 0;
  const cudaError_t err = device_optin_bytes(&optin);
  if (err != cudaSuccess) return err;
  *plan = choose_shared_plan(m, dv, tau, optin);
  return cudaSuccess;
}

cudaError_t run_shared_cumulation(const bool* query_mask, const int32_t* query_codes,
                                  const bool* key_mask, const int32_t* key_codes,
                                  const float* value, float* out, int64_t bh, int64_t nq,
                                  int64_t nk, int64_t m, int64_t dv, int tau,
                                  const SharedPlan& plan, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  if (plan.groups > 1) {  // the groups add into the output
    err = cudaMemsetAsync(out, 0, static_cast<size_t>(bh * nq * dv) * sizeof(float), stream);
    if (err != cudaSuccess) return err;
  }
  if (plan.bytes > static_cast<size_t>(kDefaultDynamicSharedBytes)) {
    // Opt in to the device's whole limit, not just this launch's bytes: the value is
    // then the same for every call, so a smaller launch on another host thread cannot
    // lower it under a larger one.
    err = cudaFuncSetAttribute(shared_cumulation_kernel,
                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(plan.limit_bytes));
    if (err != cudaSuccess) return err;
  }
  const int64_t units = bh * plan.groups * plan.slices;
  const float inv_m = 1.0f / static_cast<float>(m);
  shared_cumulation_kernel<<<grid_for(units, 1), kSharedCumulationThreads, plan.bytes, stream>>>(
      query_mask, query_codes, key_mask, key_codes, value, out, bh, nq, nk, m, dv, tau,
      plan.group, plan.slice, inv_m);
  return cudaGetLastError();
}

cudaError_t run_cumulation(const bool* query_mask, const int32_t* query_codes,
                           const bool* key_mask, const int32_t* key_codes, const float* value,
                           float* out, void* workspace, int64_t bh, int64_t nq, int64_t nk,
                           int64_t m, int64_t dv, int tau, cudaStream_t stream) {
  if (!tau_ok(tau) || bh < 0 || nq < 0 || nk < 0 || m < 1 || dv < 0) {
    return cudaErrorInvalidValue;
  }
  if (bh == 0 || nq == 0 || dv == 0) return cudaSuccess;
  if (nk == 0) {  // nothing collides: the output is zero
    return cudaMemsetAsync(out, 0, static_cast<size_t>(bh * nq * dv) * sizeof(float), stream);
  }
  SharedPlan shared;
  cudaError_t plan_err = device_shared_plan(m, dv, tau, &shared);
  if (plan_err != cudaSuccess) return plan_err;
  if (shared.use) {
    return run_shared_cumulation(query_mask, query_codes, key_mask, key_codes, value, out, bh, nq,
                                 nk, m, dv, tau, shared, stream);
  }
  // Fallback: global tables in the workspace.
  if (workspace == nullptr) return cudaErrorInvalidValue;
  const Plan plan = make_plan(bh, m, dv, tau);
  float* table = static_cast<float*>(workspace);
  const float inv_m = 1.0f / static_cast<float>(m);
  for (int64_t c0 = 0; c0 < dv; c0 += plan.nc) {
    for (int64_t b0 = 0; b0 < bh; b0 += plan.nb) {
      for (int64_t h0 = 0; h0 < m; h0 += plan.nh) {
        Chunk chunk;
        chunk.b0 = b0;
        chunk.nb = b0 + plan.nb <= bh ? plan.nb : bh - b0;
        chunk.h0 = h0;
        chunk.nh = h0 + plan.nh <= m ? plan.nh : m - h0;
        chunk.c0 = c0;
        chunk.nc = c0 + plan.nc <= dv ? plan.nc : dv - c0;
        const int64_t table_elems = (chunk.nb * chunk.nh * chunk.nc) << tau;
        cudaError_t err = cudaMemsetAsync(
            table, 0, static_cast<size_t>(table_elems) * sizeof(float), stream);
        if (err != cudaSuccess) return err;
        const int64_t scatter_items = chunk.nb * nk * chunk.nc;
        scatter_kernel<<<grid_for(scatter_items, kThreads), kThreads, 0, stream>>>(
            key_mask, key_codes, value, table, nk, m, dv, tau, chunk);
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
        const bool first = h0 == 0;
        const bool last = h0 + chunk.nh == m;
        const int64_t gather_items = chunk.nb * nq * chunk.nc;
        gather_kernel<<<grid_for(gather_items, kThreads), kThreads, 0, stream>>>(
            query_mask, query_codes, table, out, nq, m, dv, tau, chunk, first, last, inv_m);
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
      }
    }
  }
  return cudaSuccess;
}


// ---------------------------------------------------------------------------
// Sorted LSH backward (yoso_lsh_backward). Per (batch-head, hash) -- a "unit" --
// queries and keys are counting-sorted by code (integer atomics count, a
// block-wide scan gives bucket starts, a second pass places row indices), then
// blocks walk buckets. Per bucket with queries Q and keys K:
//   dV_K += (sum_Q G) / m: the block stores sum_Q G in the workspace's dV table
//           (it owns the bucket), and dv_from_tables_kernel then adds each key's
//           rows across the chunk's hashes (see make_backward_plan); where the
//           table exceeds the budget, float atomics into dV's rows instead;
//   direct: tiles of S = G_Q V_K^T in shared memory (computed from slabs of G_Q
//           and V_K rows staged in shared memory with coalesced loads), each S
//           tile used for both dQ_Q += a S K_K and dK_K += a S^T Q_Q, with the
//           tile's K_K and Q_Q rows staged in shared memory where they fit
//           (see choose_bucket_shared_plan);
//   tables: T1 = V_K^T K_K and T2 = G_Q^T Q_Q ([dv, d] each, shared memory),
//           dQ_Q += a G_Q T1 and dK_K += a V_K T2, when cheaper and they fit.
// Float atomics touch only output rows (d per row, bucket and hash; dv too on
// the fallback), never 2^tau-row tables. Codes outside [0, 2^tau) collide with
// nothing.
// ---------------------------------------------------------------------------
constexpr int kScanThreads = 256;
constexpr int kBucketThreads = 128;
constexpr int64_t kBucketBlocksPerUnit = 32;
constexpr int64_t kTileQ = 16;
constexpr int64_t kTileK = 32;
constexpr int64_t kSharedLimitBytes = 48 * 1024;
// S tiles are computed from slabs of kSlab value columns staged in shared memory;
// rows padded to kSlabStride floats so that the lanes of a warp, which read rows
// of different keys at the same column, hit different banks.
constexpr int64_t kSlab = 64;
constexpr int64_t kSlabStride = kSlab + 1;
// Pairs of an S tile per thread (the kernel is launched with kBucketThreads threads).
constexpr int kPairsPerThread = static_cast<int>((kTileQ * kTileK + kBucketThreads - 1) / kBucketThreads);
// Shared floats of the direct path: the S tile and the G and V slabs.
constexpr int64_t kDirectSharedFloats = kTileQ * kTileK + (kTileQ + kTileK) * kSlabStride;

// Row stride (floats) of the staged K_K and Q_Q rows of a direct tile: d padded to an odd
// number, as the S slabs are, so that lanes reading several rows at one column would hit
// different banks. (The dQ and dK loops below have lanes run over the columns of one
// staged row, which is conflict-free either way.)
__host__ __device__ inline int64_t staged_row_stride(int64_t d) { return d | 1; }

// Dynamic shared memory of bucket_backward_kernel. Past the S tile and the slabs, one
// region serves either the per-bucket tables T1, T2 (2 dv d floats; buckets on the table
// path) or the tile's staged K_K and Q_Q rows ((kTileK + kTileQ) x staged_row_stride(d)
// floats; buckets on the direct path): a bucket takes one path, and both end with a barrier.
// The rule, for a device whose blocks may opt in to `optin_bytes`
// (cudaDevAttrMaxSharedMemoryPerBlockOptin):
// 1. tables: as before, when the S tile, the slabs and the tables fit in the default
//    48 KiB (kSharedLimitBytes);
// 2. staging: when the whole region, the staged rows included, fits in `optin_bytes`
//    (d <= 179 within 48 KiB, d <= 1135 on an H100's 227 KiB); otherwise this launch's
//    dQ and dK read the K_K and Q_Q rows from global memory, as before.
// Above 48 KiB the launcher opts the kernel in to the device's whole limit.
struct BucketSharedPlan {
  bool tables, stage;
  int64_t row_stride;  // of the staged rows
  size_t bytes;
};

BucketSharedPlan choose_bucket_shared_plan(int64_t d, int64_t dv, int64_t optin_bytes) {
  BucketSharedPlan plan;
  const int64_t table_floats = 2 * dv * d;
  plan.tables = (kDirectSharedFloats + table_floats) * static_cast<int64_t>(sizeof(float)) <=
                kSharedLimitBytes;
  plan.row_stride = staged_row_stride(d);
  const int64_t stage_floats = (kTileQ + kTileK) * plan.row_stride;
  const int64_t region = plan.tables ? table_floats : 0;
  const int64_t staged_region = region > stage_floats ? region : stage_floats;
  plan.stage = (kDirectSharedFloats + staged_region) * static_cast<int64_t>(sizeof(float)) <=
               optin_bytes;
  plan.bytes = static_cast<size_t>(kDirectSharedFloats + (plan.stage ? staged_region : region)) *
               sizeof(float);
  return plan;
}

__global__ void count_codes_kernel(const bool* __restrict__ mask, const int32_t* __restrict__ codes,
                                   int32_t* __restrict__ count, int64_t bh, int64_t n, int64_t m,
                                   int64_t h0, int64_t hc, int tau) {
  const int64_t buckets = int64_t{1} << tau;
  const int64_t total = bh * hc * n;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e % n, unit = e / n, b = unit / hc, j = unit % hc;
    if (!mask[b * n + i]) continue;
    const int32_t code = codes[(b * n + i) * m + h0 + j];
    if (code < 0 || code >= buckets) continue;
    atomicAdd(&count[unit * buckets + code], 1);
  }
}

// start[unit][c] = sum of count[unit][0..c) for c <= buckets; count becomes the
// same exclusive prefix (the placement cursor).
__global__ void scan_codes_kernel(int32_t* __restrict__ count, int32_t* __restrict__ start,
                                  int64_t units, int tau) {
  extern __shared__ float scan_shared[];
  int32_t* sums = reinterpret_cast<int32_t*>(scan_shared);
  const int64_t buckets = int64_t{1} << tau;
  const int64_t chunk = (buckets + blockDim.x - 1) / blockDim.x;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    int32_t* cnt = count + unit * buckets;
    int32_t* st = start + unit * (buckets + 1);
    const int64_t c0 = threadIdx.x * chunk;
    const int64_t c1 = clamp64(c0 + chunk, 0, buckets);
    int32_t local = 0;
    for (int64_t c = c0; c < c1; ++c) local += cnt[c];
    sums[threadIdx.x] = local;
    __syncthreads();
    if (threadIdx.x == 0) {
      int32_t run = 0;
      for (unsigned int t = 0; t < blockDim.x; ++t) {
        const int32_t size = sums[t];
        sums[t] = run;
        run += size;
      }
      st[buckets] = run;
    }
    __syncthreads();
    int32_t run = sums[threadIdx.x];
    for (int64_t c = c0; c < c1; ++c) {
      const int32_t size = cnt[c];
      st[c] = run;
      cnt[c] = run;
      run += size;
    }
    __syncthreads();
  }
}

__global__ void place_codes_kernel(const bool* __restrict__ mask, const int32_t* __restrict__ codes,
                                   int32_t* __restrict__ cursor, int32_t* __restrict__ idx, int64_t bh,
                                   int64_t n, int64_t m, int64_t h0, int64_t hc, int tau) {
  const int64_t buckets = int64_t{1} << tau;
  const int64_t total = bh * hc * n;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e % n, unit = e / n, b = unit / hc, j = unit % hc;
    if (!mask[b * n + i]) continue;
    const int32_t code = codes[(b * n + i) * m + h0 + j];
    if (code < 0 || code >= buckets) continue;
    const int32_t pos = atomicAdd(&cursor[unit * buckets + code], 1);
    idx[unit * n + pos] = static_cast<int32_t>(i);
  }
}

struct BackwardTensors {
  const float* q;  // [bh, nq, d]
  const float* k;  // [bh, nk, d]
  const float* v;  // [bh, nk, dv]
  const float* g;  // [bh, nq, dv]
  float* dq;
  float* dk;
  float* dv;
};

__global__ void bucket_backward_kernel(BackwardTensors x, const int32_t* __restrict__ qstart,
                                       const int32_t* __restrict__ qidx,
                                       const int32_t* __restrict__ kstart,
                                       const int32_t* __restrict__ kidx, int64_t units, int64_t hc,
                                       int64_t nq, int64_t nk, int64_t d, int64_t dv, int tau,
                                       float alpha, float beta, bool tables, bool stage,
                                       int64_t row_stride, float* __restrict__ dv_table) {
  extern __shared__ float bucket_shared[];
  float* s = bucket_shared;               // [kTileQ * kTileK]
  float* gs = s + kTileQ * kTileK;        // [kTileQ * kSlabStride]: a slab of G_Q rows
  float* vs = gs + kTileQ * kSlabStride;  // [kTileK * kSlabStride]: a slab of V_K rows
  float* t1 = vs + kTileK * kSlabStride;  // [dv * d] (table buckets)
  float* t2 = t1 + dv * d;                // [dv * d] (table buckets)
  float* ks = t1;                         // [kTileK * row_stride]: K_K rows (direct, stage)
  float* qs = ks + kTileK * row_stride;   // [kTileQ * row_stride]: Q_Q rows (direct, stage)
  const int64_t buckets = int64_t{1} << tau;
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  for (int64_t blk = blockIdx.x; blk < units * kBucketBlocksPerUnit; blk += gridDim.x) {
    const int64_t unit = blk / kBucketBlocksPerUnit, part = blk % kBucketBlocksPerUnit;
    const int64_t b = unit / hc;
    const float* q = x.q + b * nq * d;
    const float* k = x.k + b * nk * d;
    const float* v = x.v + b * nk * dv;
    const float* g = x.g + b * nq * dv;
    float* dq = x.dq + b * nq * d;
    float* dk = x.dk + b * nk * d;
    float* dvo = x.dv + b * nk * dv;
    for (int64_t c = part; c < buckets; c += kBucketBlocksPerUnit) {
      const int64_t q0 = qstart[unit * (buckets + 1) + c], q1 = qstart[unit * (buckets + 1) + c + 1];
      const int64_t k0 = kstart[unit * (buckets + 1) + c], k1 = kstart[unit * (buckets + 1) + c + 1];
      const int64_t nQ = q1 - q0, nK = k1 - k0;
      if (nQ == 0 || nK == 0) continue;  // uniform over the block
      const int32_t* Q = qidx + unit * nq + q0;
      const int32_t* K = kidx + unit * nk + k0;
      for (int64_t col = tid; col < dv; col += nt) {
        float sum = 0.f;
        for (int64_t a = 0; a < nQ; ++a) sum += g[Q[a] * dv + col];
        if (dv_table != nullptr) {
          dv_table[(unit * buckets + c) * dv + col] = sum;  // this block owns the bucket
        } else {
          for (int64_t j = 0; j < nK; ++j) atomicAdd(&dvo[K[j] * dv + col], beta * sum);
        }
      }
      const double direct_cost = static_cast<double>(nQ) * nK * (dv + 2 * d);
      const double table_cost = 2.0 * (nQ + nK) * dv * d;
      if (tables && table_cost < direct_cost) {
        for (int64_t e = tid; e < dv * d; e += nt) {
          const int64_t r = e / d, col = e % d;
          float a1 = 0.f, a2 = 0.f;
          for (int64_t j = 0; j < nK; ++j) a1 += v[K[j] * dv + r] * k[K[j] * d + col];
          for (int64_t a = 0; a < nQ; ++a) a2 += g[Q[a] * dv + r] * q[Q[a] * d + col];
          t1[e] = a1;
          t2[e] = a2;
        }
        __syncthreads();
        for (int64_t e = tid; e < nQ * d; e += nt) {
          const int64_t a = e / d, col = e % d;
          float acc = 0.f;
          for (int64_t r = 0; r < dv; ++r) acc += g[Q[a] * dv + r] * t1[r * d + col];
          atomicAdd(&dq[Q[a] * d + col], alpha * acc);
        }
        for (int64_t e = tid; e < nK * d; e += nt) {
          const int64_t j = e / d, col = e % d;
          float acc = 0.f;
          for (int64_t r = 0; r < dv; ++r) acc += v[K[j] * dv + r] * t2[r * d + col];
          atomicAdd(&dk[K[j] * d + col], alpha * acc);
        }
        __syncthreads();
        continue;
      }
      for (int64_t a0 = 0; a0 < nQ; a0 += kTileQ) {
        const int64_t tq = clamp64(nQ - a0, 0, kTileQ);
        for (int64_t j0 = 0; j0 < nK; j0 += kTileK) {
          const int64_t tk = clamp64(nK - j0, 0, kTileK);
          // S = G_Q V_K^T. Slabs of kSlab value columns of the tile's G and V rows are
          // staged in shared memory, each row loaded by consecutive lanes (coalesced);
          // thread `tid` keeps the partial dots of pairs tid, tid + nt, ... in registers
          // across slabs (same summation order as one walk over dv).
          float part[kPairsPerThread];
#pragma unroll
          for (int p = 0; p < kPairsPerThread; ++p) part[p] = 0.f;
          for (int64_t r0 = 0; r0 < dv; r0 += kSlab) {
            const int64_t w = clamp64(dv - r0, 0, kSlab);
            for (int64_t e = tid; e < tq * w; e += nt) {
              const int64_t a = e / w, r = e % w;
              gs[a * kSlabStride + r] = g[Q[a0 + a] * dv + r0 + r];
            }
            for (int64_t e = tid; e < tk * w; e += nt) {
              const int64_t j = e / w, r = e % w;
              vs[j * kSlabStride + r] = v[K[j0 + j] * dv + r0 + r];
            }
            __syncthreads();
#pragma unroll
            for (int p = 0; p < kPairsPerThread; ++p) {
              const int64_t e = tid + p * nt;
              if (e < tq * tk) {
                const float* gr = gs + (e / tk) * kSlabStride;
                const float* vr = vs + (e % tk) * kSlabStride;
                float acc = part[p];
                for (int64_t r = 0; r < w; ++r) acc += gr[r] * vr[r];
                part[p] = acc;
              }
            }
            __syncthreads();  // the slabs are overwritten next
          }
#pragma unroll
          for (int p = 0; p < kPairsPerThread; ++p) {
            const int64_t e = tid + p * nt;
            if (e < tq * tk) s[e] = part[p];
          }
          if (stage) {
            // The tile's K_K and Q_Q rows, each loaded by consecutive lanes (coalesced).
            for (int64_t e = tid; e < tk * d; e += nt) {
              const int64_t j = e / d, col = e % d;
              ks[j * row_stride + col] = k[K[j0 + j] * d + col];
            }
            for (int64_t e = tid; e < tq * d; e += nt) {
              const int64_t a = e / d, col = e % d;
              qs[a * row_stride + col] = q[Q[a0 + a] * d + col];
            }
          }
          __syncthreads();  // the S tile and the staged rows are complete
          // dQ_Q += a S K_K and dK_K += a S^T Q_Q, summed in the same order either way.
          for (int64_t e = tid; e < tq * d; e += nt) {
            const int64_t a = e / d, col = e % d;
            float acc = 0.f;
            if (stage) {
              for (int64_t j = 0; j < tk; ++j) acc += s[a * tk + j] * ks[j * row_stride + col];
            } else {
              for (int64_t j = 0; j < tk; ++j) acc += s[a * tk + j] * k[K[j0 + j] * d + col];
            }
            atomicAdd(&dq[Q[a0 + a] * d + col], alpha * acc);
          }
          for (int64_t e = tid; e < tk * d; e += nt) {
            const int64_t j = e / d, col = e % d;
            float acc = 0.f;
            if (stage) {
              for (int64_t a = 0; a < tq; ++a) acc += s[a * tk + j] * qs[a * row_stride + col];
            } else {
              for (int64_t a = 0; a < tq; ++a) acc += s[a * tk + j] * q[Q[a0 + a] * d + col];
            }
            atomicAdd(&dk[K[j0 + j] * d + col], alpha * acc);
          }
          __syncthreads();  // S and the staged rows are overwritten by the next tile
        }
      }
    }
  }
}

// dV from the per-bucket tables of one hash chunk (key-owned, no atomics):
// grad_value[b, j] += beta * sum over the chunk's hashes h of table[b, h, code(j, h)], for real
// keys whose bucket holds queries (the bucket kernel wrote exactly those rows of the table).
// Thread e owns (key, column) e, consecutive lanes take consecutive columns of one key.
__global__ void dv_from_tables_kernel(const bool* __restrict__ key_mask,
                                      const int32_t* __restrict__ key_codes,
                                      const int32_t* __restrict__ qstart,
                                      const float* __restrict__ dv_table,
                                      float* __restrict__ grad_value, int64_t bh, int64_t nk,
                                      int64_t m, int64_t h0, int64_t hc, int64_t dv, int tau,
                                      float beta) {
  const int64_t buckets = int64_t{1} << tau;
  const int64_t total = bh * nk * dv;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t col = e % dv, key = e / dv, b = key / nk;
    if (!key_mask[key]) continue;
    const int32_t* kc = key_codes + key * m + h0;
    float acc = 0.f;
    for (int64_t h = 0; h < hc; ++h) {
      const int32_t code = kc[h];
      if (code < 0 || code >= buckets) continue;
      const int64_t unit = b * hc + h;
      const int32_t* qs = qstart + unit * (buckets + 1) + code;
      if (qs[1] == qs[0]) continue;  // no query in the bucket: its row was not written
      acc += dv_table[(unit * buckets + code) * dv + col];
    }
    grad_value[e] += beta * acc;
  }
}

// The backward's workspace and its hash chunks. Per hash of a chunk (all bh heads) the
// workspace holds the sort's int32 arrays, bh (4 2^tau + 2 + nq + nk), and with dV tables
// a [bh, 2^tau, dv] float table of the buckets' sums of G. The rule, so that the workspace
// stays within YOSO_TABLE_BUDGET_BYTES (but always holds one hash's arrays):
// 1. one hash's arrays and table fit the budget: dV from the tables (one table write per
//    bucket, then dv_from_tables_kernel writes each key's row once per chunk); a chunk holds
//    as many hashes as fit, at most m;
// 2. else (tau 12 with bh dv above ~16000, tau 16 above ~1000): dV by one float atomic
//    per (key, hash, column), as before; a chunk holds as many hashes' arrays as fit.
struct BackwardPlan {
  int64_t hc;           // hashes per chunk
  bool dv_tables;
  int64_t int_elems;    // int32 elements of the sort's arrays, rounded up to 64 (256 B)
  int64_t table_elems;  // floats of the dV tables (0 without them)
};

BackwardPlan make_backward_plan(int64_t bh, int64_t nq, int64_t nk, int64_t m, int64_t dv, int tau) {
  const int64_t buckets = int64_t{1} << tau;
  const int64_t budget = static_cast<int64_t>(YOSO_TABLE_BUDGET_BYTES);
  const int64_t ints = bh * (4 * buckets + 2 + nq + nk);
  const int64_t table = bh * buckets * dv;
  const int64_t per_hash = (ints + table) * static_cast<int64_t>(sizeof(float));
  BackwardPlan plan;
  plan.dv_tables = dv > 0 && per_hash <= budget;
  if (plan.dv_tables) {
    plan.hc = clamp64(budget / per_hash, 1, m);
  } else {
    plan.hc = clamp64(budget / (ints * static_cast<int64_t>(sizeof(int32_t))), 1, m);
  }
  plan.int_elems = (plan.hc * ints + 63) / 64 * 64;
  plan.table_elems = plan.dv_tables ? plan.hc * table : 0;
  return plan;
}

}  // namespace

extern "C" {

cudaError_t yoso_pack_sign_bits(const float* projected, int32_t* codes, int64_t rows,
                                int64_t m, int tau, cudaStream_t stream) {
  if (!tau_ok(tau) || rows < 0 || m < 0) return cudaErrorInvalidValue;
  const int64_t total = rows * m;
  if (total == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(kThreads) * static_cast<size_t>(tau);
  pack_sign_bits_kernel<<<grid_for(total, kThreads), kThreads, smem, stream>>>(projected, codes,
                                                                              total, tau);
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
    int optin = 0;
    cudaError_t err = device_optin_bytes(&optin);
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

size_t yoso_lsh_cumulation_workspace_bytes(int64_t bh, int64_t m, int64_t dv, int tau) {
  if (!tau_ok(tau) || bh < 1 || m < 1 || dv < 1) return 0;
  SharedPlan shared;
  // The same rule as the launcher: no workspace when the tables fit in shared memory
  // (if the device cannot be queried, the launcher fails too; size for the fallback).
  if (device_shared_plan(m, dv, tau, &shared) == cudaSuccess && shared.use) return 0;
  const Plan plan = make_plan(bh, m, dv, tau);
  return static_cast<size_t>((plan.nb * plan.nh * plan.nc) << tau) * sizeof(float);
}

cudaError_t yoso_lsh_cumulation(const bool* query_mask, const int32_t* query_codes,
                                const bool* key_mask, const int32_t* key_codes,
                                const float* value, float* out, void* workspace, int64_t bh,
                                int64_t nq, int64_t nk, int64_t m, int64_t dv, int tau,
                                cudaStream_t stream) {
  return run_cumulation(query_mask, query_codes, key_mask, key_codes, value, out, workspace, bh,
                        nq, nk, m, dv, tau, stream);
}

size_t yoso_lsh_backward_workspace_bytes(int64_t bh, int64_t nq, int64_t nk, int64_t m, int64_t dv,
                                         int tau) {
  if (!tau_ok(tau) || bh < 1 || m < 1 || nq < 0 || nk < 0 || dv < 0) return 0;
  const BackwardPlan plan = make_backward_plan(bh, nq, nk, m, dv, tau);
  return static_cast<size_t>(plan.int_elems) * sizeof(int32_t) +
         static_cast<size_t>(plan.table_elems) * sizeof(float);
}

cudaError_t yoso_lsh_backward(const bool* query_mask, const int32_t* query_codes, const float* query,
                              const bool* key_mask, const int32_t* key_codes, const float* key,
                              const float* value, const float* grad, float* grad_query,
                              float* grad_key, float* grad_value, void* workspace, int64_t bh,
                              int64_t nq, int64_t nk, int64_t m, int64_t d, int64_t dv, int tau,
                              cudaStream_t stream) {
  if (!tau_ok(tau) || bh < 0 || nq < 0 || nk < 0 || m < 0 || d < 0 || dv < 0) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaMemsetAsync(grad_query, 0, sizeof(float) * bh * nq * d, stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(grad_key, 0, sizeof(float) * bh * nk * d, stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(grad_value, 0, sizeof(float) * bh * nk * dv, stream);
  if (err != cudaSuccess || bh == 0 || nq == 0 || nk == 0 || m == 0 || d == 0 || dv == 0) return err;
  const int64_t buckets = int64_t{1} << tau;
  const BackwardPlan plan = make_backward_plan(bh, nq, nk, m, dv, tau);
  const int64_t hc_max = plan.hc;
  int32_t* ints = static_cast<int32_t*>(workspace);
  float* dv_table = plan.dv_tables ? reinterpret_cast<float*>(ints + plan.int_elems) : nullptr;
  int32_t* qcount = ints;
  int32_t* kcount = qcount + hc_max * bh * buckets;
  int32_t* qstart = kcount + hc_max * bh * buckets;
  int32_t* kstart = qstart + hc_max * bh * (buckets + 1);
  int32_t* qidx = kstart + hc_max * bh * (buckets + 1);
  int32_t* kidx = qidx + hc_max * bh * nq;
  const BackwardTensors x{query, key, value, grad, grad_query, grad_key, grad_value};
  const float alpha = static_cast<float>(tau) / 2.0f / static_cast<float>(m);
  const float beta = 1.0f / static_cast<float>(m);
  int optin = 0;
  err = device_optin_bytes(&optin);
  if (err != cudaSuccess) return err;
  const BucketSharedPlan smem = choose_bucket_shared_plan(d, dv, optin);
  if (smem.bytes > static_cast<size_t>(kSharedLimitBytes)) {
    // As the forward's shared_cumulation launcher: opt in to the device's whole limit, the
    // same value on every call.
    err = cudaFuncSetAttribute(bucket_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               optin);
    if (err != cudaSuccess) return err;
  }
  for (int64_t h0 = 0; h0 < m; h0 += hc_max) {
    const int64_t hc = clamp64(m - h0, 1, hc_max);
    const int64_t units = bh * hc;
    err = cudaMemsetAsync(qcount, 0, sizeof(int32_t) * 2 * hc_max * bh * buckets, stream);
    if (err != cudaSuccess) return err;
    count_codes_kernel<<<grid_for(units * nq, kThreads), kThreads, 0, stream>>>(
        query_mask, query_codes, qcount, bh, nq, m, h0, hc, tau);
    count_codes_kernel<<<grid_for(units * nk, kThreads), kThreads, 0, stream>>>(
        key_mask, key_codes, kcount, bh, nk, m, h0, hc, tau);
    scan_codes_kernel<<<grid_for(units, 1), kScanThreads, kScanThreads * sizeof(int32_t), stream>>>(
        qcount, qstart, units, tau);
    scan_codes_kernel<<<grid_for(units, 1), kScanThreads, kScanThreads * sizeof(int32_t), stream>>>(
        kcount, kstart, units, tau);
    place_codes_kernel<<<grid_for(units * nq, kThreads), kThreads, 0, stream>>>(
        query_mask, query_codes, qcount, qidx, bh, nq, m, h0, hc, tau);
    place_codes_kernel<<<grid_for(units * nk, kThreads), kThreads, 0, stream>>>(
        key_mask, key_codes, kcount, kidx, bh, nk, m, h0, hc, tau);
    bucket_backward_kernel<<<grid_for(units * kBucketBlocksPerUnit, 1), kBucketThreads, smem.bytes,
                             stream>>>(x, qstart, qidx, kstart, kidx, units, hc, nq, nk, d, dv, tau,
                                       alpha, beta, smem.tables, smem.stage, smem.row_stride,
                                       dv_table);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    if (plan.dv_tables) {
      dv_from_tables_kernel<<<grid_for(bh * nk * dv, kThreads), kThreads, 0, stream>>>(
          key_mask, key_codes, qstart, dv_table, grad_value, bh, nk, m, h0, hc, dv, tau, beta);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // extern "C"
