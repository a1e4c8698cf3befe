// YOSO CPU kernels: OpenMP drivers + per-instruction-set kernel bodies.
//
// The kernel bodies (yoso_cpu_isa.inc) are compiled three times: for the
// x86-64 baseline (SSE2), for AVX2+FMA and for AVX-512, each under a
// `#pragma GCC target` and in its own namespace; the best variant the running
// CPU supports is picked at first use (runtime check), so the extension never
// needs -march=native and runs on any x86-64 machine. YOSO_CPU_ISA=baseline|
// avx2|avx512|avx512bf16 forces a variant. Other architectures get the portable
// variant. The avx512bf16 variant is the AVX-512 one plus bf16 contractions in
// the backward (BackwardArgs::bf16); the others run that option in fp32.
//
// Parallelism: work units are (batch-head, range of hashes); a unit owns the
// output rows of its batch-head, so no atomics are needed. When there are
// fewer batch-heads than threads, the hashes are split and partial outputs
// are summed at the end.

#include "yoso_cpu_kernels.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace yoso_cpu {
namespace detail {

constexpr int64_t PAD = 16;  // buffer padding granularity: the widest vector (AVX-512)

// Blocking of the fused backward's buckets (see backward_task in yoso_cpu_isa.inc).
constexpr int64_t BACKWARD_KEY_CHUNK = 128;   // keys packed per chunk (multiple of PAD)
constexpr int64_t BACKWARD_QUERY_CHUNK = 64;  // query rows per chunk
constexpr int64_t BACKWARD_SORT_HASHES = 8;   // hashes whose codes are transposed together

// Per-thread scratch of the fused backward (see backward_task in yoso_cpu_isa.inc).
struct BackwardScratch {
  int32_t* qcount;
  int32_t* kcount;
  int32_t* qidx;
  int32_t* kidx;
  int32_t* qcodes_t;
  int32_t* kcodes_t;
  float* vt;     // [dv, KC]: V_K^T or G_Q^T of a chunk
  float* sbuf;   // [QC, KC]: S
  float* stbuf;  // [KC, QC]: S^T
  float* t1;     // [dv, d]
  float* t2;     // [dv, d]
  float* gsum;   // [dv]
  // bf16 path only (null otherwise): bf16 copies of this batch-head's rows, widths
  // padded to 32 (d2, dv2), and the packed operands of one bucket chunk.
  uint16_t* qb;      // [nq, d2]
  uint16_t* kb;      // [nk, d2]
  uint16_t* vb;      // [nk, dv2]
  uint16_t* gb;      // [nq, dv2]
  uint16_t* sb;      // [QC, KC]: S in bf16
  uint16_t* stb;     // [KC, QC]: S^T in bf16
  uint32_t* vpairs;  // [dv2 / 2, KC]: V_K^T, two dims per word
  uint32_t* kpairs;  // [KC / 2, d]: K_K, two keys per word
  uint32_t* qpairs;  // [QC / 2, d]: Q_Q, two queries per word
  const uint32_t** wrows;  // [max(QC, KC)]: A rows of the bf16 GEMMs
  const float** arows;
  const float** brows;
  float** crows;
};

// Entry points of one ISA variant; see yoso_cpu_isa.inc for what they do.
struct IsaKernels {
  const char* name;
  void (*hash_gaussian)(const HashGaussianArgs&, int64_t b, int64_t r0, int64_t r1, float* pbuf,
                        float* ybuf, const float** rows);
  void (*hash_fast)(const HashFastArgs&, int64_t b, int64_t r0, int64_t r1, float* ybuf);
  bool (*cumulation)(const CumulationArgs&, int64_t b, int64_t h0, int64_t h1, float* out,
                     float* table, int64_t cw_max, int64_t group);
  bool (*backward)(const BackwardArgs&, int64_t b, int64_t h0, int64_t h1, float* dq, float* dk,
                   float* dv, const BackwardScratch& s);
  // The backward with bf16 contractions; null in variants without AVX512-BF16.
  bool (*backward_bf16)(const BackwardArgs&, int64_t b, int64_t h0, int64_t h1, float* dq,
                        float* dk, float* dv, const BackwardScratch& s);
  // The sequence convolution on rows [r0, r1) of batch-head b (see yoso_cpu_isa.inc).
  void (*conv_forward)(const SequenceConvArgs&, int64_t b, int64_t r0, int64_t r1, float* scratch);
  void (*conv_backward)(const SequenceConvArgs&, int64_t b, int64_t r0, int64_t r1, float* scratch,
                        float* weight_partial);
};

}  // namespace detail
}  // namespace yoso_cpu

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define YOSO_X86 1
#else
#define YOSO_X86 0
#endif

// ---- portable / x86-64 baseline variant ----
namespace yoso_cpu::detail::isa_baseline {
using detail::IsaKernels;
#define YOSO_ISA_NAME "baseline"
#define YOSO_VEC_BYTES 16
#define YOSO_MK_VECS 2
#define YOSO_MK_ROWS {0, 8, 4}
#include "yoso_cpu_isa.inc"
#undef YOSO_ISA_NAME
#undef YOSO_VEC_BYTES
#undef YOSO_MK_ROWS
#undef YOSO_MK_VECS
}  // namespace yoso_cpu::detail::isa_baseline

#if YOSO_X86
// ---- AVX2 + FMA variant ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace yoso_cpu::detail::isa_avx2 {
using detail::IsaKernels;
#define YOSO_ISA_NAME "avx2"
#define YOSO_VEC_BYTES 32
#define YOSO_MK_VECS 2
#define YOSO_MK_ROWS {0, 10, 6}
#include "yoso_cpu_isa.inc"
#undef YOSO_ISA_NAME
#undef YOSO_VEC_BYTES
#undef YOSO_MK_ROWS
#undef YOSO_MK_VECS
}  // namespace yoso_cpu::detail::isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- AVX-512 variant ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
namespace yoso_cpu::detail::isa_avx512 {
using detail::IsaKernels;
#define YOSO_ISA_NAME "avx512"
#define YOSO_VEC_BYTES 64
#define YOSO_MK_VECS 4
#define YOSO_MK_ROWS {0, 12, 8, 6, 6}
#include "yoso_cpu_isa.inc"
#undef YOSO_ISA_NAME
#undef YOSO_VEC_BYTES
#undef YOSO_MK_ROWS
#undef YOSO_MK_VECS
}  // namespace yoso_cpu::detail::isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- AVX-512 + AVX512-BF16 variant (bf16 contractions in the backward) ----
#if defined(__clang__)
#pragma clang attribute push(                                                                  \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")
#endif
namespace yoso_cpu::detail::isa_avx512bf16 {
using detail::IsaKernels;
#define YOSO_ISA_NAME "avx512bf16"
#define YOSO_VEC_BYTES 64
#define YOSO_MK_VECS 4
#define YOSO_MK_ROWS {0, 12, 8, 6, 6}
#define YOSO_BF16 1
#include "yoso_cpu_isa.inc"
#undef YOSO_BF16
#undef YOSO_ISA_NAME
#undef YOSO_VEC_BYTES
#undef YOSO_MK_ROWS
#undef YOSO_MK_VECS
}  // namespace yoso_cpu::detail::isa_avx512bf16
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // YOSO_X86

namespace yoso_cpu {
namespace detail {

namespace {

bool cpu_has(const char* isa) {
  if (std::strcmp(isa, "baseline") == 0) return true;
#if YOSO_X86
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx2") == 0) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx512") == 0) return avx512;
  if (std::strcmp(isa, "avx512bf16") == 0) return avx512 && __builtin_cpu_supports("avx512bf16");
#endif
  return false;
}

const IsaKernels* find_isa(const char* name) {
#if YOSO_X86
  if (std::strcmp(name, "avx512bf16") == 0) return &isa_avx512bf16::kernels;
  if (std::strcmp(name, "avx512") == 0) return &isa_avx512::kernels;
  if (std::strcmp(name, "avx2") == 0) return &isa_avx2::kernels;
#endif
  if (std::strcmp(name, "baseline") == 0) return &isa_baseline::kernels;
  return nullptr;
}

const IsaKernels* best_isa() {
  const char* forced = std::getenv("YOSO_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const IsaKernels* isa = find_isa(forced);
    if (isa != nullptr && cpu_has(forced)) return isa;
  }
  for (const char* name : {"avx512bf16", "avx512", "avx2", "baseline"}) {
    const IsaKernels* isa = find_isa(name);
    if (isa != nullptr && cpu_has(name)) return isa;
  }
  return &isa_baseline::kernels;
}

std::atomic<const IsaKernels*> g_isa{nullptr};

const IsaKernels& isa() {
  const IsaKernels* current = g_isa.load(std::memory_order_acquire);
  if (current == nullptr) {
    current = best_isa();
    g_isa.store(current, std::memory_order_release);
  }
  return *current;
}

int64_t max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// How many hash ranges each batch-head is split into. Units are (batch-head,
// hash range); a split > 1 costs a private partial output per extra range, so
// use the fewest that balance the threads: 1 when the batch-heads already do
// (a multiple of the threads, or enough of them that the last round is a small
// fraction), else the smallest s with bh * s a multiple of the threads.
int64_t hash_splits(int64_t bh, int64_t m, int64_t threads) {
  if (threads <= 1 || bh % threads == 0 || bh >= 4 * threads) return 1;
  int64_t s = 2;
  while ((bh * s) % threads != 0 && s < threads) ++s;
  return s < m ? s : m;
}

// Threads worth starting for `units` work units (never more than units).
int64_t team_size(int64_t units) {
  const int64_t threads = max_threads();
  return units < threads ? (units < 1 ? 1 : units) : threads;
}

// A per-thread buffer kept across calls (grown when needed, never shrunk), so
// that repeated calls of the same shape allocate nothing.
template <typename T>
T* thread_buffer(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

// Runs task(unit, thread) for unit in [0, units) on the OpenMP team, dynamically scheduled.
template <typename Task>
void parallel_units(int64_t units, int64_t threads, const Task& task) {
#ifdef _OPENMP
  if (threads > 1 && units > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast<int>(threads))
    for (int64_t u = 0; u < units; ++u) task(u, static_cast<int64_t>(omp_get_thread_num()));
    return;
  }
#endif
  for (int64_t u = 0; u < units; ++u) task(u, 0);
}

// Sums the partial outputs of split hash ranges into out.
void reduce_splits(float* out, const std::vector<float>& partial, int64_t splits, int64_t size,
                   int64_t threads) {
  if (splits <= 1) return;
  constexpr int64_t block = 1 << 14;
  const int64_t blocks = (size + block - 1) / block;
  parallel_units(blocks, threads, [&](int64_t u, int64_t) {
    const int64_t lo = u * block, hi = lo + block < size ? lo + block : size;
    for (int64_t s = 1; s < splits; ++s) {
      const float* src = partial.data() + (s - 1) * size;
      for (int64_t e = lo; e < hi; ++e) out[e] += src[e];
    }
  });
}

}  // namespace

}  // namespace detail

using detail::isa;

void hash_gaussian(const HashGaussianArgs& args) {
  constexpr int64_t rows_per_unit = 64;
  const int64_t blocks = (args.n + rows_per_unit - 1) / rows_per_unit;
  const int64_t units = args.bh * blocks;
  if (units == 0 || args.m == 0) return;
  const int64_t threads = detail::max_threads();
  const int64_t np = detail::round_up(args.m * args.tau, detail::PAD);
  const int64_t floats = (args.d + rows_per_unit) * np;
  const int64_t ptrs = 2 * rows_per_unit + args.d;
  std::vector<float> scratch(static_cast<size_t>(threads * floats));
  std::vector<const float*> rows(static_cast<size_t>(threads * ptrs));
  const detail::IsaKernels& kernels = isa();
  detail::parallel_units(units, threads, [&](int64_t u, int64_t t) {
    const int64_t b = u / blocks, r0 = (u % blocks) * rows_per_unit;
    const int64_t r1 = r0 + rows_per_unit < args.n ? r0 + rows_per_unit : args.n;
    float* pbuf = scratch.data() + t * floats;
    kernels.hash_gaussian(args, b, r0, r1, pbuf, pbuf + args.d * np, rows.data() + t * ptrs);
  });
}

void hash_fast(const HashFastArgs& args) {
  constexpr int64_t rows_per_unit = 16;  // == FAST_ROWS of the kernels
  const int64_t blocks = (args.n + rows_per_unit - 1) / rows_per_unit;
  const int64_t units = args.bh * blocks;
  if (units == 0 || args.m == 0) return;
  const int64_t threads = detail::max_threads();
  const int64_t floats = args.width * rows_per_unit;
  std::vector<float> scratch(static_cast<size_t>(threads * floats));
  const detail::IsaKernels& kernels = isa();
  detail::parallel_units(units, threads, [&](int64_t u, int64_t t) {
    const int64_t b = u / blocks, r0 = (u % blocks) * rows_per_unit;
    const int64_t r1 = r0 + rows_per_unit < args.n ? r0 + rows_per_unit : args.n;
    kernels.hash_fast(args, b, r0, r1, scratch.data() + t * floats);
  });
}

bool lsh_cumulation(const CumulationArgs& args) {
  if (args.bh == 0 || args.nq == 0 || args.nk == 0 || args.dv == 0 || args.m == 0) return true;
  const int64_t threads = detail::max_threads();
  const int64_t buckets = int64_t{1} << args.tau;
  // Column chunk of the tables: all of dv up to 64 floats, narrower for huge tables.
  int64_t cw_max = detail::round_up(args.dv < 64 ? args.dv : 64, detail::PAD);
  constexpr int64_t max_table_bytes = int64_t{4} << 20;
  while (cw_max > detail::PAD && buckets * cw_max * 4 > max_table_bytes) cw_max -= detail::PAD;
  // Hashes whose tables are built together (each value row is read once per group).
  constexpr int64_t group_bytes = int64_t{256} << 10;
  int64_t group = group_bytes / (buckets * cw_max * 4);
  group = group < 1 ? 1 : (group > args.m ? args.m : group);
  const int64_t table_floats = group * buckets * cw_max;

  const int64_t splits = detail::hash_splits(args.bh, args.m, threads);
  const int64_t out_size = args.bh * args.nq * args.dv;
  std::vector<float> partial(static_cast<size_t>((splits - 1) * out_size), 0.f);
  const detail::IsaKernels& kernels = isa();
  std::atomic<bool> ok{true};
  detail::parallel_units(args.bh * splits, detail::team_size(args.bh * splits), [&](int64_t u, int64_t) {
    // Zero on first use and left zero by every task, so it is kept across calls.
    thread_local std::vector<float> tables;
    float* table = detail::thread_buffer(tables, table_floats);
    const int64_t b = u / splits, s = u % splits;
    const int64_t h0 = s * args.m / splits, h1 = (s + 1) * args.m / splits;
    float* out = (s == 0 ? args.out : partial.data() + (s - 1) * out_size) + b * args.nq * args.dv;
    if (!kernels.cumulation(args, b, h0, h1, out, table, cw_max, group)) {
      ok.store(false, std::memory_order_relaxed);
    }
  });
  detail::reduce_splits(args.out, partial, splits, out_size, threads);
  return ok.load();
}

bool lsh_backward(const BackwardArgs& args) {
  if (args.bh == 0 || args.nq == 0 || args.nk == 0 || args.m == 0) return true;
  const int64_t threads = detail::max_threads();
  const int64_t splits = detail::hash_splits(args.bh, args.m, threads);
  const int64_t units = args.bh * splits;
  const int64_t team = detail::team_size(units);
  const int64_t buckets = int64_t{1} << args.tau;
  constexpr int64_t kc = detail::BACKWARD_KEY_CHUNK, qc = detail::BACKWARD_QUERY_CHUNK;
  const int64_t ints = 2 * buckets + (1 + detail::BACKWARD_SORT_HASHES) * (args.nq + args.nk);
  const int64_t floats = args.dv * kc + 2 * qc * kc + 2 * args.dv * args.d + args.dv;
  int64_t ptrs = kc > args.d ? kc : args.d;
  ptrs = ptrs > args.dv ? ptrs : args.dv;
  const int64_t dq_size = args.bh * args.nq * args.d, dk_size = args.bh * args.nk * args.d;
  const int64_t dv_size = args.bh * args.nk * args.dv;
  std::vector<float> partial(static_cast<size_t>((splits - 1) * (dq_size + dk_size + dv_size)), 0.f);
  const detail::IsaKernels& kernels = isa();
  const auto task = args.bf16 && kernels.backward_bf16 != nullptr ? kernels.backward_bf16
                                                                   : kernels.backward;
  const bool bf16 = task == kernels.backward_bf16;
  // bf16 scratch: the rows of one batch-head (widths padded to 32) and one chunk's operands.
  const int64_t d2 = detail::round_up(args.d, 32), dv2 = detail::round_up(args.dv, 32);
  const int64_t halves = bf16 ? (args.nq + args.nk) * (d2 + dv2) + 2 * qc * kc : 0;
  const int64_t words = bf16 ? (dv2 / 2) * kc + (kc / 2 + qc / 2) * args.d : 0;
  std::atomic<bool> ok{true};
  detail::parallel_units(units, team, [&](int64_t u, int64_t) {
    thread_local std::vector<int32_t> int_buffer;
    thread_local std::vector<float> float_buffer;
    thread_local std::vector<const float*> ptr_buffer;
    thread_local std::vector<uint16_t> half_buffer;
    thread_local std::vector<uint32_t> word_buffer;
    thread_local std::vector<const uint32_t*> word_rows;
    int32_t* ip = detail::thread_buffer(int_buffer, ints);
    float* fp = detail::thread_buffer(float_buffer, floats);
    const float** pp = detail::thread_buffer(ptr_buffer, 3 * ptrs);
    detail::BackwardScratch sc{};
    if (bf16) {
      uint16_t* hp = detail::thread_buffer(half_buffer, halves);
      uint32_t* wp = detail::thread_buffer(word_buffer, words);
      sc.qb = hp;
      sc.kb = sc.qb + args.nq * d2;
      sc.vb = sc.kb + args.nk * d2;
      sc.gb = sc.vb + args.nk * dv2;
      sc.sb = sc.gb + args.nq * dv2;
      sc.stb = sc.sb + qc * kc;
      sc.vpairs = wp;
      sc.kpairs = sc.vpairs + (dv2 / 2) * kc;
      sc.qpairs = sc.kpairs + (kc / 2) * args.d;
      sc.wrows = detail::thread_buffer(word_rows, kc);
    }
    sc.qcount = ip;
    sc.kcount = ip + buckets;
    sc.qidx = ip + 2 * buckets;
    sc.kidx = sc.qidx + args.nq;
    sc.qcodes_t = sc.kidx + args.nk;
    sc.kcodes_t = sc.qcodes_t + detail::BACKWARD_SORT_HASHES * args.nq;
    sc.vt = fp;
    sc.sbuf = sc.vt + args.dv * kc;
    sc.stbuf = sc.sbuf + qc * kc;
    sc.t1 = sc.stbuf + qc * kc;
    sc.t2 = sc.t1 + args.dv * args.d;
    sc.gsum = sc.t2 + args.dv * args.d;
    sc.arows = pp;
    sc.brows = pp + ptrs;
    sc.crows = const_cast<float**>(pp + 2 * ptrs);
    const int64_t b = u / splits, s = u % splits;
    const int64_t h0 = s * args.m / splits, h1 = (s + 1) * args.m / splits;
    float* base = partial.data() + (s - 1) * (dq_size + dk_size + dv_size);
    float* dq = (s == 0 ? args.grad_query : base) + b * args.nq * args.d;
    float* dk = (s == 0 ? args.grad_key : base + dq_size) + b * args.nk * args.d;
    float* dv = (s == 0 ? args.grad_value : base + dq_size + dk_size) + b * args.nk * args.dv;
    if (!task(args, b, h0, h1, dq, dk, dv, sc)) ok.store(false, std::memory_order_relaxed);
  });
  if (splits > 1) {
    const int64_t total = dq_size + dk_size + dv_size;
    float* outs[3] = {args.grad_query, args.grad_key, args.grad_value};
    const int64_t sizes[3] = {dq_size, dk_size, dv_size};
    int64_t offset = 0;
    for (int o = 0; o < 3; ++o) {
      for (int64_t s = 1; s < splits; ++s) {
        const float* src = partial.data() + (s - 1) * total + offset;
        float* dst = outs[o];
        for (int64_t e = 0; e < sizes[o]; ++e) dst[e] += src[e];
      }
      offset += sizes[o];
    }
  }
  return ok.load();
}

namespace {

constexpr int64_t CONV_BLOCK_ROWS = 128;  // sequence rows per convolution task

// Per-thread scratch floats of a convolution task (see yoso_cpu_isa.inc).
int64_t conv_scratch_floats(const SequenceConvArgs& a) {
  const int64_t dp = detail::round_up(a.d, detail::PAD);
  return 2 * (CONV_BLOCK_ROWS + a.w - 1) * dp + 4 * dp + (a.w > CONV_BLOCK_ROWS ? a.w : CONV_BLOCK_ROWS);
}

// Runs task(b, r0, r1, unit, scratch) over (batch-head, row block) units.
template <typename Task>
void conv_units(const SequenceConvArgs& a, const Task& task) {
  const int64_t blocks = (a.n + CONV_BLOCK_ROWS - 1) / CONV_BLOCK_ROWS;
  const int64_t units = a.bh * blocks, floats = conv_scratch_floats(a);
  detail::parallel_units(units, detail::team_size(units), [&](int64_t u, int64_t) {
    thread_local std::vector<float> scratch;
    const int64_t b = u / blocks, r0 = (u % blocks) * CONV_BLOCK_ROWS;
    const int64_t r1 = r0 + CONV_BLOCK_ROWS < a.n ? r0 + CONV_BLOCK_ROWS : a.n;
    task(b, r0, r1, u, detail::thread_buffer(scratch, floats));
  });
}

}  // namespace

void sequence_conv(const SequenceConvArgs& args) {
  if (args.bh == 0 || args.n == 0 || args.d == 0) return;
  const detail::IsaKernels& kernels = isa();
  conv_units(args, [&](int64_t b, int64_t r0, int64_t r1, int64_t, float* scratch) {
    kernels.conv_forward(args, b, r0, r1, scratch);
  });
}

void sequence_conv_backward(const SequenceConvArgs& args, float* grad_weight) {
  for (int64_t e = 0; e < args.heads * args.w; ++e) grad_weight[e] = 0.f;
  if (args.bh == 0 || args.n == 0 || args.d == 0) return;
  const int64_t blocks = (args.n + CONV_BLOCK_ROWS - 1) / CONV_BLOCK_ROWS;
  // One filter-gradient row per task, summed below in task order: the result does
  // not depend on which thread ran which task.
  std::vector<float> partial(static_cast<size_t>(args.bh * blocks * args.w), 0.f);
  const detail::IsaKernels& kernels = isa();
  conv_units(args, [&](int64_t b, int64_t r0, int64_t r1, int64_t u, float* scratch) {
    kernels.conv_backward(args, b, r0, r1, scratch, partial.data() + u * args.w);
  });
  std::vector<double> sums(static_cast<size_t>(args.heads * args.w), 0.0);
  for (int64_t u = 0; u < args.bh * blocks; ++u) {
    double* row = sums.data() + ((u / blocks) % args.heads) * args.w;
    for (int64_t t = 0; t < args.w; ++t) row[t] += partial[static_cast<size_t>(u * args.w + t)];
  }
  for (int64_t e = 0; e < args.heads * args.w; ++e) grad_weight[e] = static_cast<float>(sums[e]);
}

const char* active_isa() { return isa().name; }

bool bf16_supported() { return isa().backward_bf16 != nullptr; }

const char* supported_isas() {
  static const char* names = [] {
    static std::string joined;
    for (const char* name : {"avx512bf16", "avx512", "avx2", "baseline"}) {
      if (detail::find_isa(name) != nullptr && detail::cpu_has(name)) {
        if (!joined.empty()) joined += ",";
        joined += name;
      }
    }
    return joined.c_str();
  }();
  return names;
}

bool set_isa(const char* name) {
  const detail::IsaKernels* found = detail::find_isa(name);
  if (found == nullptr || !detail::cpu_has(name)) return false;
  detail::g_isa.store(found, std::memory_order_release);
  return true;
}

}  // namespace yoso_cpu
