// Torch binding of the YOSO CUDA kernels (launchers in yoso_kernels.cuh).
//
// Same function names and signatures as the C++ CPU extension. Each function
// checks devices, dtypes and shapes, makes its inputs contiguous, allocates
// the outputs (and the hash-table workspace through torch's caching
// allocator) and launches on the current CUDA stream of the inputs' device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

#include <tuple>

#include "yoso_kernels.cuh"

namespace {

constexpr int64_t kMaxTau = YOSO_MAX_HASH_CODE_LEN;
// Largest float32 projection tensor hash_gaussian keeps in flight (bytes).
constexpr int64_t kHashChunkBytes = int64_t{64} << 20;

void check_tau(int64_t tau) {
  TORCH_CHECK(tau >= 1 && tau <= kMaxTau, "hash_code_len must be in [1, ", kMaxTau, "], got ",
              tau);
}

void check_tensor(const torch::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim,
                  const torch::Tensor& anchor) {
  TORCH_CHECK(t.is_cuda(), "yoso cuda backend: ", name, " must be a CUDA tensor, got ",
              t.device());
  TORCH_CHECK(t.device() == anchor.device(), "yoso cuda backend: ", name, " is on ", t.device(),
              " but the other inputs are on ", anchor.device());
  TORCH_CHECK(t.scalar_type() == dtype, "yoso cuda backend: ", name, " must be ",
              c10::toString(dtype), ", got ", t.scalar_type(),
              " (the Python wrapper converts dtypes)");
  TORCH_CHECK(t.dim() == dim, "yoso cuda backend: ", name, " must have ", dim,
              " dims, got shape ", t.sizes());
}

void check_size(const torch::Tensor& t, const char* name, int64_t dim, int64_t expected,
                const char* what) {
  TORCH_CHECK(t.size(dim) == expected, "yoso cuda backend: ", name, ".shape[", dim,
              "] must equal ", what, " = ", expected, ", got shape ", t.sizes());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "yoso cuda backend: ", op, " failed: ",
              cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

cudaStream_t current_stream(const torch::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// Masks [BH, n] bool; codes [BH, n, m] int32.
void check_side(const torch::Tensor& mask, const char* mask_name, const torch::Tensor& codes,
                const char* codes_name, const torch::Tensor& anchor) {
  check_tensor(mask, mask_name, at::kBool, 2, anchor);
  check_tensor(codes, codes_name, at::kInt, 3, anchor);
  check_size(codes, codes_name, 0, mask.size(0), "mask batch");
  check_size(codes, codes_name, 1, mask.size(1), "mask length");
}

}  // namespace

// The Gaussian hash as a GEMM: the projections of all m hashes come from one
// at::bmm (cuBLAS, the very call reference.hash_gaussian makes, so the codes
// are those of the reference on the same device; both follow torch's float32
// matmul precision), then yoso_pack_sign_bits packs their signs. Heads are
// taken in chunks so that the projections in flight stay under
// kHashChunkBytes.
torch::Tensor hash_gaussian(torch::Tensor x, torch::Tensor projection, int64_t tau) {
  check_tau(tau);
  check_tensor(x, "x", at::kFloat, 3, x);
  check_tensor(projection, "projection", at::kFloat, 3, x);
  check_size(projection, "projection", 0, x.size(0), "x.shape[0]");
  check_size(projection, "projection", 1, x.size(2), "x.shape[2] (head dim)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t bh = x.size(0), n = x.size(1);
  const int64_t m = projection.size(2) / tau;
  auto codes = torch::empty({bh, n, m}, x.options().dtype(at::kInt));
  if (bh == 0 || n == 0 || m == 0) return codes;
  x = x.contiguous();
  projection = projection.narrow(2, 0, m * tau);  // extra columns are ignored
  const int64_t head_bytes = n * m * tau * static_cast<int64_t>(sizeof(float));
  const int64_t heads = std::clamp<int64_t>(kHashChunkBytes / head_bytes, 1, bh);
  for (int64_t b0 = 0; b0 < bh; b0 += heads) {
    const int64_t nb = std::min(heads, bh - b0);
    const torch::Tensor projected =
        at::bmm(x.narrow(0, b0, nb), projection.narrow(0, b0, nb)).contiguous();
    check_launch(yoso_pack_sign_bits(projected.data_ptr<float>(),
                                     codes.data_ptr<int32_t>() + b0 * n * m, nb * n, m,
                                     static_cast<int>(tau), current_stream(x)),
                 "hash_gaussian (pack_sign_bits)");
  }
  return codes;
}

torch::Tensor hash_fast(torch::Tensor x, torch::Tensor signs, int64_t num_hashes, int64_t tau) {
  check_tau(tau);
  TORCH_CHECK(num_hashes >= 1, "num_hashes must be >= 1, got ", num_hashes);
  check_tensor(x, "x", at::kFloat, 3, x);
  check_tensor(signs, "signs", at::kFloat, 4, x);
  check_size(signs, "signs", 0, x.size(0), "x.shape[0]");
  check_size(signs, "signs", 1, 3, "the 3 diagonals");
  const int64_t bh = x.size(0), n = x.size(1), d = x.size(2);
  const int64_t parts = signs.size(2), width = signs.size(3);
  int64_t expected_width = 1;
  while (expected_width < std::max<int64_t>(d, tau)) expected_width *= 2;
  TORCH_CHECK(width == expected_width && parts * (width / tau) >= num_hashes,
              "signs of shape ", signs.sizes(), " do not fit head_dim=", d,
              ", num_hashes=", num_hashes, ", hash_code_len=", tau, " (need width ",
              expected_width, " and parts >= ", (num_hashes + width / tau - 1) / (width / tau),
              ")");
  const c10::cuda::CUDAGuard guard(x.device());
  x = x.contiguous();
  signs = signs.contiguous();
  auto codes = torch::empty({bh, n, num_hashes}, x.options().dtype(at::kInt));
  const cudaError_t err =
      yoso_hash_fast(x.data_ptr<float>(), signs.data_ptr<float>(), codes.data_ptr<int32_t>(), bh,
                     n, d, parts, width, num_hashes, static_cast<int>(tau), current_stream(x));
  TORCH_CHECK(err != cudaErrorInvalidConfiguration,
              "yoso cuda backend: hash_fast width ", width,
              " (padded head dim) does not fit in the device's shared memory");
  check_launch(err, "hash_fast");
  return codes;
}

torch::Tensor lsh_cumulation(torch::Tensor query_mask, torch::Tensor query_codes,
                             torch::Tensor key_mask, torch::Tensor key_codes,
                             torch::Tensor value, int64_t tau) {
  check_tau(tau);
  check_tensor(value, "value", at::kFloat, 3, value);
  check_side(query_mask, "query_mask", query_codes, "query_codes", value);
  check_side(key_mask, "key_mask", key_codes, "key_codes", value);
  const int64_t bh = value.size(0), nk = value.size(1), dv = value.size(2);
  const int64_t nq = query_codes.size(1), m = query_codes.size(2);
  check_size(query_codes, "query_codes", 0, bh, "value.shape[0]");
  check_size(key_codes, "key_codes", 0, bh, "value.shape[0]");
  check_size(key_codes, "key_codes", 1, nk, "value.shape[1] (number of keys)");
  check_size(key_codes, "key_codes", 2, m, "query_codes.shape[2] (number of hashes)");
  TORCH_CHECK(m >= 1, "yoso cuda backend: need at least one hash, got codes of shape ",
              query_codes.sizes());
  const c10::cuda::CUDAGuard guard(value.device());
  query_mask = query_mask.contiguous();
  query_codes = query_codes.contiguous();
  key_mask = key_mask.contiguous();
  key_codes = key_codes.contiguous();
  value = value.contiguous();
  auto out = torch::empty({bh, nq, dv}, value.options());
  const size_t ws_bytes = yoso_lsh_cumulation_workspace_bytes(bh, m, dv, static_cast<int>(tau));
  auto workspace = torch::empty({static_cast<int64_t>(ws_bytes / sizeof(float))},
                                value.options());
  check_launch(yoso_lsh_cumulation(query_mask.data_ptr<bool>(), query_codes.data_ptr<int32_t>(),
                                   key_mask.data_ptr<bool>(), key_codes.data_ptr<int32_t>(),
                                   value.data_ptr<float>(), out.data_ptr<float>(),
                                   workspace.data_ptr(), bh, nq, nk, m, dv,
                                   static_cast<int>(tau), current_stream(value)),
               "lsh_cumulation");
  return out;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> lsh_backward(
    torch::Tensor query_mask, torch::Tensor query_codes, torch::Tensor query, torch::Tensor key_mask,
    torch::Tensor key_codes, torch::Tensor key, torch::Tensor value, torch::Tensor grad, int64_t tau,
    bool /*bf16*/) {
  // bf16 contractions are a CPU (AVX512-BF16) option; the CUDA backward always runs fp32.
  check_tau(tau);
  check_tensor(value, "value", at::kFloat, 3, value);
  check_tensor(query, "query", at::kFloat, 3, value);
  check_tensor(key, "key", at::kFloat, 3, value);
  check_tensor(grad, "grad", at::kFloat, 3, value);
  check_side(query_mask, "query_mask", query_codes, "query_codes", value);
  check_side(key_mask, "key_mask", key_codes, "key_codes", value);
  const int64_t bh = value.size(0), nk = value.size(1), dv = value.size(2);
  const int64_t nq = query_codes.size(1), m = query_codes.size(2), d = query.size(2);
  check_size(query_codes, "query_codes", 0, bh, "value.shape[0]");
  check_size(key_codes, "key_codes", 0, bh, "value.shape[0]");
  check_size(key_codes, "key_codes", 1, nk, "value.shape[1] (number of keys)");
  check_size(key_codes, "key_codes", 2, m, "query_codes.shape[2] (number of hashes)");
  check_size(query, "query", 0, bh, "value.shape[0]");
  check_size(query, "query", 1, nq, "query_codes.shape[1] (number of queries)");
  check_size(key, "key", 0, bh, "value.shape[0]");
  check_size(key, "key", 1, nk, "value.shape[1] (number of keys)");
  check_size(key, "key", 2, d, "query.shape[2] (head dim)");
  check_size(grad, "grad", 0, bh, "value.shape[0]");
  check_size(grad, "grad", 1, nq, "query_codes.shape[1] (number of queries)");
  check_size(grad, "grad", 2, dv, "value.shape[2] (value dim)");
  TORCH_CHECK(m >= 1, "yoso cuda backend: need at least one hash, got codes of shape ",
              query_codes.sizes());
  const c10::cuda::CUDAGuard guard(value.device());
  query_mask = query_mask.contiguous();
  query_codes = query_codes.contiguous();
  key_mask = key_mask.contiguous();
  key_codes = key_codes.contiguous();
  query = query.contiguous();
  key = key.contiguous();
  value = value.contiguous();
  grad = grad.contiguous();
  auto grad_query = torch::empty({bh, nq, d}, value.options());
  auto grad_key = torch::empty({bh, nk, d}, value.options());
  auto grad_value = torch::empty({bh, nk, dv}, value.options());
  const size_t ws_bytes =
      yoso_lsh_backward_workspace_bytes(bh, nq, nk, m, dv, static_cast<int>(tau));
  auto workspace = torch::empty({static_cast<int64_t>(ws_bytes / sizeof(int32_t)) + 1},
                                value.options().dtype(at::kInt));
  check_launch(yoso_lsh_backward(query_mask.data_ptr<bool>(), query_codes.data_ptr<int32_t>(),
                                 query.data_ptr<float>(), key_mask.data_ptr<bool>(),
                                 key_codes.data_ptr<int32_t>(), key.data_ptr<float>(),
                                 value.data_ptr<float>(), grad.data_ptr<float>(),
                                 grad_query.data_ptr<float>(), grad_key.data_ptr<float>(),
                                 grad_value.data_ptr<float>(), workspace.data_ptr(), bh, nq, nk, m,
                                 d, dv, static_cast<int>(tau), current_stream(value)),
               "lsh_backward");
  return {grad_query, grad_key, grad_value};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "YOSO attention ops, CUDA kernels (semantics of src/kernels/reference.py)";
  module.def("hash_gaussian", &hash_gaussian, "Random-hyperplane LSH codes [BH, n, m] int32",
             pybind11::arg("x"), pybind11::arg("projection"), pybind11::arg("hash_code_len"));
  module.def("hash_fast", &hash_fast, "Hadamard (fast) LSH codes [BH, n, m] int32",
             pybind11::arg("x"), pybind11::arg("signs"), pybind11::arg("num_hashes"),
             pybind11::arg("hash_code_len"));
  module.def("lsh_cumulation", &lsh_cumulation, "Hash-table cumulation [BH, nq, dv]",
             pybind11::arg("query_mask"), pybind11::arg("query_codes"),
             pybind11::arg("key_mask"), pybind11::arg("key_codes"), pybind11::arg("value"),
             pybind11::arg("hash_code_len"));
  module.def("lsh_backward", &lsh_backward,
             "Sorted LSH backward: (dQ, dK, dV) of the cumulation, tau/2 included",
             pybind11::arg("query_mask"), pybind11::arg("query_codes"), pybind11::arg("query"),
             pybind11::arg("key_mask"), pybind11::arg("key_codes"), pybind11::arg("key"),
             pybind11::arg("value"), pybind11::arg("grad"), pybind11::arg("hash_code_len"),
             pybind11::arg("bf16") = false);
}
