// Host-side API of the YOSO CUDA kernels (yoso_kernels.cu).
//
// Plain C launchers: raw device pointers, sizes and a stream; no torch types,
// so the .cu file compiles with plain nvcc and the torch binding (binding.cpp)
// only needs this header. Semantics are those of the functions with the same
// names in src/kernels/reference.py:
// - all tensors are contiguous, batched over BH = batch x heads;
// - codes are int32 in [0, 2**tau); masks are bool (one byte, 0 or 1);
// - the cumulation averages over the m hashes and accumulate in float32.
// Codes outside [0, 2**tau) never cause an out-of-bounds access: such a hash
// simply collides with nothing.
//
// Every launcher returns cudaSuccess or the CUDA error of the failing call
// (including launch errors, checked with cudaGetLastError). Zero-sized
// problems launch nothing and succeed. The launchers are asynchronous on
// `stream` and do not synchronise.
#ifndef YOSO_KERNELS_CUH_
#define YOSO_KERNELS_CUH_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// Largest supported hash code length (tables have 2**tau rows).
#define YOSO_MAX_HASH_CODE_LEN 16
// Upper bound on the float32 hash-table workspace of the cumulation's global
// tables (bytes); larger problems are processed in chunks of heads, hashes and
// columns. Tables that fit in a block's shared memory need no workspace.
#define YOSO_TABLE_BUDGET_BYTES (256ull << 20)

// The Gaussian hash's packing step (the projections come from a GEMM done by the
// caller, e.g. at::bmm(x, projection[..., :m * tau])):
// codes[r, h] = sum_t [ projected[r, h * tau + t] > 0 ] << t
//   projected: f32 [rows, m * tau] contiguous; codes: i32 [rows, m].
// Bit t is set exactly when the float is > 0 (0, -0 and NaN give 0), as in
// reference.hash_gaussian, so equal projections give bit-identical codes.
cudaError_t yoso_pack_sign_bits(const float* projected, int32_t* codes, int64_t rows, int64_t m,
                                int tau, cudaStream_t stream);

// Fast (Hadamard) hash: y = H D3 H D2 H D1 pad(x) per rotation p;
// hash p * (width / tau) + s uses bits s * tau .. s * tau + tau - 1 of y.
//   x: f32 [bh, n, d]; signs: f32 [bh, 3, parts, width]; codes: i32 [bh, n, m].
//   width must be the power of two >= max(d, tau) and parts * (width / tau) >= m.
// Returns cudaErrorInvalidValue when the sizes do not fit, and
// cudaErrorInvalidConfiguration when `width` floats exceed the shared memory of the device.
cudaError_t yoso_hash_fast(const float* x, const float* signs, int32_t* codes,
                           int64_t bh, int64_t n, int64_t d, int64_t parts, int64_t width,
                           int64_t m, int tau, cudaStream_t stream);

// Bytes of device workspace that yoso_lsh_cumulation needs on the current device
// (at most YOSO_TABLE_BUDGET_BYTES): 0 when the tables fit in shared memory.
size_t yoso_lsh_cumulation_workspace_bytes(int64_t bh, int64_t m, int64_t dv, int tau);

// out[b, i] = mq[b, i] / m * sum_h sum_j mk[b, j] [qc[b, i, h] == kc[b, j, h]] v[b, j]
//   query_mask: bool [bh, nq]; query_codes: i32 [bh, nq, m]
//   key_mask: bool [bh, nk]; key_codes: i32 [bh, nk, m]; value: f32 [bh, nk, dv]
//   out: f32 [bh, nq, dv] (fully written); workspace: >= workspace_bytes(bh, m, dv, tau)
//   (may be null when that is 0).
// Tables of 2**tau rows per hash live in shared memory when one hash's table,
// or a slice of at least min(dv, 8) of its columns, fits in the device's
// opt-in limit of dynamic shared memory; otherwise in the global workspace.
cudaError_t yoso_lsh_cumulation(const bool* query_mask, const int32_t* query_codes,
                                const bool* key_mask, const int32_t* key_codes,
                                const float* value, float* out, void* workspace,
                                int64_t bh, int64_t nq, int64_t nk, int64_t m, int64_t dv,
                                int tau, cudaStream_t stream);

// Bytes of device workspace yoso_lsh_backward needs: the sort's indices and, when one
// hash's [bh, 2**tau, dv] float table of bucket sums fits beside them, the dV tables. At
// most about YOSO_TABLE_BUDGET_BYTES: hashes are processed in chunks.
size_t yoso_lsh_backward_workspace_bytes(int64_t bh, int64_t nq, int64_t nk, int64_t m, int64_t dv,
                                         int tau);

// The LSH surrogate gradients of yoso_lsh_cumulation (reference.lsh_backward):
//   grad_value[b, j] = mk / m * sum_h sum_i mq [qc == kc] grad[b, i]
//   grad_query[b, i] = (tau / 2) mq / m * sum_h sum_j mk [qc == kc] (grad_i . v_j) key[b, j]
//   grad_key[b, j]   = (tau / 2) mk / m * sum_h sum_i mq [qc == kc] (grad_i . v_j) query[b, i]
// query/key f32 [bh, n, d]; value f32 [bh, nk, dv]; grad f32 [bh, nq, dv]; outputs
// fully written. Queries and keys are counting-sorted by code per (head, hash);
// float atomics touch dQ and dK rows only; dV comes from per-bucket tables of G's sums
// in the workspace (or, where those exceed the budget, from atomics into dV's rows).
cudaError_t yoso_lsh_backward(const bool* query_mask, const int32_t* query_codes, const float* query,
                              const bool* key_mask, const int32_t* key_codes, const float* key,
                              const float* value, const float* grad, float* grad_query,
                              float* grad_key, float* grad_value, void* workspace, int64_t bh,
                              int64_t nq, int64_t nk, int64_t m, int64_t d, int64_t dv, int tau,
                              cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // YOSO_KERNELS_CUH_
