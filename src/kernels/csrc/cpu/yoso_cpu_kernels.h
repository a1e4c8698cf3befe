// Raw-pointer interface of the YOSO CPU kernels (no torch headers, so that the
// kernel translation unit compiles quickly and stays independent of ATen).
//
// Layouts follow src/kernels/reference.py: everything is a flattened batch of
// heads, row-major and contiguous. Codes are int32 [BH, n, m]; masks are bool
// [BH, n]; outputs are float32 and must be zero-initialised by the caller.
#pragma once

#include <cstdint>

namespace yoso_cpu {

struct HashGaussianArgs {
  const float* x;           // [BH, n, d]
  const float* projection;  // [BH, d, m * tau]
  int32_t* codes;           // [BH, n, m]
  int64_t bh, n, d, m, tau;
};

struct HashFastArgs {
  const float* x;      // [BH, n, d]
  const float* signs;  // [BH, 3, parts, width]
  int32_t* codes;      // [BH, n, m]
  int64_t bh, n, d, parts, width, m, tau;
};

struct CumulationArgs {
  const bool* query_mask;     // [BH, nq]
  const int32_t* query_codes; // [BH, nq, m]
  const bool* key_mask;       // [BH, nk]
  const int32_t* key_codes;   // [BH, nk, m]
  const float* value;         // [BH, nk, dv]
  float* out;                 // [BH, nq, dv], zero on entry
  int64_t bh, nq, nk, m, dv, tau;
};

// The fused LSH backward (reference.lsh_backward). d and dv must be multiples
// of 16 (zero-padded by the caller); outputs zero on entry.
struct BackwardArgs {
  const bool* query_mask;      // [BH, nq]
  const int32_t* query_codes;  // [BH, nq, m]
  const float* query;          // [BH, nq, d] unit queries
  const bool* key_mask;        // [BH, nk]
  const int32_t* key_codes;    // [BH, nk, m]
  const float* key;            // [BH, nk, d] unit keys
  const float* value;          // [BH, nk, dv]
  const float* grad;           // [BH, nq, dv] gradient of the cumulation
  float* grad_query;           // [BH, nq, d]
  float* grad_key;             // [BH, nk, d]
  float* grad_value;           // [BH, nk, dv]
  int64_t bh, nq, nk, m, d, dv, tau;
  double weight_scale;         // tau / 2: the paper's surrogate factor
  // Run the per-pair contractions (S = G V^T, S K, S^T Q) on bf16 operands with
  // fp32 accumulation (AVX512-BF16); ignored (fp32) where the CPU lacks it.
  bool bf16;
};

// YOSO-C's depthwise convolution along the sequence (reference.sequence_conv):
//   out[b, i] = sum_t weight[b % heads, t] * (mask[b, j] ? value[b, j] : 0),
//   j = i + t - w / 2, rows outside [0, n) counting as zero; w odd.
struct SequenceConvArgs {
  const float* value;  // [BH, n, d]
  const bool* mask;    // [BH, n]: false rows of value count as zero (NaN there too)
  const float* weight; // [heads, w]: batch-head b uses row b % heads
  const float* grad;   // backward: gradient of out (layout as out); null in the forward
  float* out;          // forward: out; backward: grad_value [BH, n, d]
  int64_t bh, n, d, heads, w;
  // Layout of the forward's out and the backward's grad: false = [BH, n, d]; true =
  // [BH / heads, n, heads, d], the attention output's layout (rows of one batch-head
  // heads * d apart), so that the convolution reads and writes it in place.
  bool seq_major = false;
  // Forward: out = base * base_scale + convolution when base is given (base laid out as
  // out, and may be out; base_scale: one factor per row of base, or null for 1).
  const float* base = nullptr;
  const float* base_scale = nullptr;
};

void hash_gaussian(const HashGaussianArgs& args);
void hash_fast(const HashFastArgs& args);
// The cumulation and the backward return false (output unspecified) if a code is outside
// [0, 2^tau): codes index the hash tables, so they are always range-checked.
bool lsh_cumulation(const CumulationArgs& args);
bool lsh_backward(const BackwardArgs& args);

void sequence_conv(const SequenceConvArgs& args);
// grad_weight: [heads, w], written (summed over batch and rows in a fixed order,
// so the result is deterministic for any thread count's work split).
void sequence_conv_backward(const SequenceConvArgs& args, float* grad_weight);

// True when lsh_backward's bf16 option runs bf16 contractions on this CPU
// (AVX512-BF16 present and the active variant has them).
bool bf16_supported();

// Instruction-set variant used by the kernels: "avx512bf16", "avx512", "avx2" or "baseline".
// Chosen at first use from the CPU (runtime check) and YOSO_CPU_ISA if set.
const char* active_isa();
// Comma-separated variants this CPU can run, best first.
const char* supported_isas();
// Force a variant (tests compare them); returns false if unknown/unsupported.
bool set_isa(const char* name);

}  // namespace yoso_cpu
