// Python binding of the YOSO CPU kernels: tensor checks, output allocation, and
// calls into the raw-pointer kernels of yoso_cpu_kernels.cpp.
//
// Function names and signatures are shared with the CUDA extension, so that the
// Python side can dispatch on the device alone:
//   hash_gaussian(x f32[BH,n,d], projection f32[BH,d,m*tau], tau) -> i32[BH,n,m]
//   hash_fast(x f32[BH,n,d], signs f32[BH,3,parts,D], num_hashes, tau) -> i32[BH,n,m]
//   lsh_cumulation(qmask b[BH,nq], qcodes i32[BH,nq,m], kmask b[BH,nk], kcodes i32[BH,nk,m],
//                  value f32[BH,nk,dv], tau) -> f32[BH,nq,dv]
//   lsh_backward(qmask, qcodes, query f32[BH,nq,d], kmask, kcodes, key f32[BH,nk,d], value,
//                grad f32[BH,nq,dv], tau, bf16) -> (dQ, dK, dV)
//   sequence_conv(value f32[BH,n,d], mask b[BH,n], weight f32[H,w]) -> f32[BH,n,d]  (CPU only)
//   sequence_conv_add(base f32[BH,n,d] or [BH/H,n,H,d], base_scale f32 per row of base or None,
//                     value, mask, weight) -> base * base_scale + conv, laid out as base
//   sequence_conv_backward(grad (either layout), value, mask, weight)
//       -> (grad_value f32[BH,n,d], grad_weight f32[H,w])
// Semantics are those of the functions with the same names in reference.py.

// Only the headers needed (not <torch/extension.h>): the JIT build of this file
// takes ~8 s instead of ~20 s.
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <tuple>

#include "yoso_cpu_kernels.h"

namespace {

constexpr int64_t kMaxHashCodeLen = 16;

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), "yoso_cpu: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "yoso_cpu: ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == dims, "yoso_cpu: ", name, " must have ", dims, " dims, got shape ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "yoso_cpu: ", name, " must be contiguous");
}

void check_tau(int64_t tau) {
  TORCH_CHECK(tau >= 1 && tau <= kMaxHashCodeLen, "yoso_cpu: hash_code_len must be in [1, ",
              kMaxHashCodeLen, "], got ", tau);
}

// Shared checks of the (query, key) sides of the cumulation and its backward; returns m.
int64_t check_sides(const at::Tensor& query_mask, const at::Tensor& query_codes,
                    const at::Tensor& key_mask, const at::Tensor& key_codes,
                    const at::Tensor& value, int64_t tau) {
  check_tau(tau);
  check_tensor(query_mask, "query_mask", at::kBool, 2);
  check_tensor(query_codes, "query_codes", at::kInt, 3);
  check_tensor(key_mask, "key_mask", at::kBool, 2);
  check_tensor(key_codes, "key_codes", at::kInt, 3);
  check_tensor(value, "value", at::kFloat, 3);
  const int64_t bh = query_codes.size(0), nq = query_codes.size(1), m = query_codes.size(2);
  const int64_t nk = key_codes.size(1);
  TORCH_CHECK(query_mask.size(0) == bh && query_mask.size(1) == nq,
              "yoso_cpu: query_mask ", query_mask.sizes(), " does not match query_codes ",
              query_codes.sizes());
  TORCH_CHECK(key_codes.size(0) == bh && key_codes.size(2) == m, "yoso_cpu: key_codes ",
              key_codes.sizes(), " does not match query_codes ", query_codes.sizes());
  TORCH_CHECK(key_mask.size(0) == bh && key_mask.size(1) == nk, "yoso_cpu: key_mask ",
              key_mask.sizes(), " does not match key_codes ", key_codes.sizes());
  TORCH_CHECK(value.size(0) == bh && value.size(1) == nk, "yoso_cpu: value ", value.sizes(),
              " does not match key_codes ", key_codes.sizes());
  return m;
}

at::Tensor hash_gaussian(const at::Tensor& x, const at::Tensor& projection, int64_t tau) {
  check_tau(tau);
  check_tensor(x, "x", at::kFloat, 3);
  check_tensor(projection, "projection", at::kFloat, 3);
  const int64_t bh = x.size(0), n = x.size(1), d = x.size(2);
  TORCH_CHECK(projection.size(0) == bh && projection.size(1) == d,
              "yoso_cpu: projection ", projection.sizes(), " does not fit x ", x.sizes());
  TORCH_CHECK(projection.size(2) % tau == 0, "yoso_cpu: projection width ", projection.size(2),
              " is not a multiple of hash_code_len ", tau);
  const int64_t m = projection.size(2) / tau;
  at::Tensor codes = at::empty({bh, n, m}, x.options().dtype(at::kInt));
  yoso_cpu::HashGaussianArgs args{x.data_ptr<float>(), projection.data_ptr<float>(),
                                  codes.data_ptr<int32_t>(), bh, n, d, m, tau};
  {
    pybind11::gil_scoped_release no_gil;
    yoso_cpu::hash_gaussian(args);
  }
  return codes;
}

at::Tensor hash_fast(const at::Tensor& x, const at::Tensor& signs, int64_t num_hashes,
                     int64_t tau) {
  check_tau(tau);
  check_tensor(x, "x", at::kFloat, 3);
  check_tensor(signs, "signs", at::kFloat, 4);
  const int64_t bh = x.size(0), n = x.size(1), d = x.size(2);
  const int64_t parts = signs.size(2), width = signs.size(3);
  int64_t expected = 1;
  while (expected < d || expected < tau) expected <<= 1;
  TORCH_CHECK(signs.size(0) == bh && signs.size(1) == 3 && width == expected &&
                  parts * (width / tau) >= num_hashes && num_hashes >= 1,
              "yoso_cpu: signs ", signs.sizes(), " do not fit x ", x.sizes(), ", num_hashes=",
              num_hashes, ", hash_code_len=", tau, " (expected [BH, 3, parts, ", expected, "])");
  at::Tensor codes = at::empty({bh, n, num_hashes}, x.options().dtype(at::kInt));
  yoso_cpu::HashFastArgs args{x.data_ptr<float>(), signs.data_ptr<float>(),
                              codes.data_ptr<int32_t>(), bh, n, d, parts, width, num_hashes, tau};
  {
    pybind11::gil_scoped_release no_gil;
    yoso_cpu::hash_fast(args);
  }
  return codes;
}

at::Tensor lsh_cumulation(const at::Tensor& query_mask, const at::Tensor& query_codes,
                          const at::Tensor& key_mask, const at::Tensor& key_codes,
                          const at::Tensor& value, int64_t tau) {
  const int64_t m = check_sides(query_mask, query_codes, key_mask, key_codes, value, tau);
  const int64_t bh = query_codes.size(0), nq = query_codes.size(1), nk = key_codes.size(1);
  const int64_t dv = value.size(2);
  at::Tensor out = at::zeros({bh, nq, dv}, value.options());
  yoso_cpu::CumulationArgs args{query_mask.data_ptr<bool>(), query_codes.data_ptr<int32_t>(),
                                key_mask.data_ptr<bool>(),   key_codes.data_ptr<int32_t>(),
                                value.data_ptr<float>(),     out.data_ptr<float>(),
                                bh, nq, nk, m, dv, tau};
  bool ok = true;
  {
    pybind11::gil_scoped_release no_gil;
    ok = yoso_cpu::lsh_cumulation(args);
  }
  TORCH_CHECK(ok, "yoso_cpu: hash codes must lie in [0, 2**hash_code_len)");
  return out;
}

// Zero-pads the last dim to a multiple of 16 floats (the widest vector), so that
// the backward kernel handles whole vectors only; no copy when already aligned.
at::Tensor pad_last(const at::Tensor& t) {
  const int64_t width = t.size(-1), padded = (width + 15) / 16 * 16;
  return padded == width ? t : at::constant_pad_nd(t, {0, padded - width}, 0.0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lsh_backward(
    const at::Tensor& query_mask, const at::Tensor& query_codes, const at::Tensor& query,
    const at::Tensor& key_mask, const at::Tensor& key_codes, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& grad, int64_t tau, bool bf16) {
  const int64_t m = check_sides(query_mask, query_codes, key_mask, key_codes, value, tau);
  check_tensor(query, "query", at::kFloat, 3);
  check_tensor(key, "key", at::kFloat, 3);
  check_tensor(grad, "grad", at::kFloat, 3);
  const int64_t bh = query_codes.size(0), nq = query_codes.size(1), nk = key_codes.size(1);
  const int64_t d = query.size(2), dv = value.size(2);
  TORCH_CHECK(query.size(0) == bh && query.size(1) == nq, "yoso_cpu: query ", query.sizes(),
              " does not match query_codes ", query_codes.sizes());
  TORCH_CHECK(key.size(0) == bh && key.size(1) == nk && key.size(2) == d, "yoso_cpu: key ",
              key.sizes(), " does not match key_codes ", key_codes.sizes(), " and query ",
              query.sizes());
  TORCH_CHECK(grad.size(0) == bh && grad.size(1) == nq && grad.size(2) == dv, "yoso_cpu: grad ",
              grad.sizes(), " must be [BH, nq, dv] = [", bh, ", ", nq, ", ", dv, "]");
  const at::Tensor q = pad_last(query), k = pad_last(key), v = pad_last(value), g = pad_last(grad);
  const int64_t dp = q.size(2), dvp = v.size(2);
  at::Tensor grad_query = at::zeros({bh, nq, dp}, query.options());
  at::Tensor grad_key = at::zeros({bh, nk, dp}, query.options());
  at::Tensor grad_value = at::zeros({bh, nk, dvp}, query.options());
  yoso_cpu::BackwardArgs args{query_mask.data_ptr<bool>(), query_codes.data_ptr<int32_t>(),
                              q.data_ptr<float>(),          key_mask.data_ptr<bool>(),
                              key_codes.data_ptr<int32_t>(), k.data_ptr<float>(),
                              v.data_ptr<float>(),          g.data_ptr<float>(),
                              grad_query.data_ptr<float>(), grad_key.data_ptr<float>(),
                              grad_value.data_ptr<float>(), bh, nq, nk, m, dp, dvp, tau,
                              static_cast<double>(tau) / 2.0, bf16};
  bool ok = true;
  {
    pybind11::gil_scoped_release no_gil;
    ok = yoso_cpu::lsh_backward(args);
  }
  TORCH_CHECK(ok, "yoso_cpu: hash codes must lie in [0, 2**hash_code_len)");
  if (dp != d) {
    grad_query = grad_query.narrow(2, 0, d).contiguous();
    grad_key = grad_key.narrow(2, 0, d).contiguous();
  }
  if (dvp != dv) grad_value = grad_value.narrow(2, 0, dv).contiguous();
  return {grad_query, grad_key, grad_value};
}

// Shared checks of the convolution's operands; returns the filter width.
int64_t check_conv(const at::Tensor& value, const at::Tensor& mask, const at::Tensor& weight) {
  check_tensor(value, "value", at::kFloat, 3);
  check_tensor(mask, "mask", at::kBool, 2);
  check_tensor(weight, "weight", at::kFloat, 2);
  const int64_t bh = value.size(0), n = value.size(1), heads = weight.size(0), w = weight.size(1);
  TORCH_CHECK(mask.size(0) == bh && mask.size(1) == n, "yoso_cpu: mask ", mask.sizes(),
              " does not match value ", value.sizes());
  TORCH_CHECK(heads >= 1 && bh % heads == 0, "yoso_cpu: weight has ", heads,
              " filters, which does not divide the ", bh, " batch-heads of value");
  TORCH_CHECK(w >= 1 && w % 2 == 1, "yoso_cpu: the filter width must be odd, got ", w);
  return w;
}

// out = base * scale + the convolution (base null: the convolution alone), out laid
// out as [BH, n, d] or, seq_major, [BH / heads, n, heads, d].
at::Tensor conv_forward(const at::Tensor& value, const at::Tensor& mask, const at::Tensor& weight,
                        int64_t w, at::Tensor out, bool seq_major, const float* base,
                        const float* scale) {
  yoso_cpu::SequenceConvArgs args{value.data_ptr<float>(), mask.data_ptr<bool>(),
                                  weight.data_ptr<float>(), nullptr, out.data_ptr<float>(),
                                  value.size(0), value.size(1), value.size(2), weight.size(0), w,
                                  seq_major, base, scale};
  {
    pybind11::gil_scoped_release no_gil;
    yoso_cpu::sequence_conv(args);
  }
  return out;
}

at::Tensor sequence_conv(const at::Tensor& value, const at::Tensor& mask, const at::Tensor& weight) {
  const int64_t w = check_conv(value, mask, weight);
  return conv_forward(value, mask, weight, w, at::empty_like(value), false, nullptr, nullptr);
}

// A tensor the convolution writes (forward) or reads (backward) as the values'
// rows: [BH, n, d] like value, or [BH / heads, n, heads, d] (the attention output's
// layout); returns whether it is the latter.
bool check_conv_rows(const at::Tensor& t, const char* name, const at::Tensor& value,
                     int64_t heads) {
  check_tensor(t, name, at::kFloat, t.dim() == 4 ? 4 : 3);
  const int64_t bh = value.size(0), n = value.size(1), d = value.size(2);
  if (t.dim() == 3) {
    TORCH_CHECK(t.sizes() == value.sizes(), "yoso_cpu: ", name, " ", t.sizes(),
                " does not match value ", value.sizes());
    return false;
  }
  TORCH_CHECK(t.size(0) * heads == bh && t.size(1) == n && t.size(2) == heads && t.size(3) == d,
              "yoso_cpu: ", name, " ", t.sizes(), " must be [batch, n, heads, d] = [", bh / heads,
              ", ", n, ", ", heads, ", ", d, "] for value ", value.sizes());
  return true;
}

at::Tensor sequence_conv_add(const at::Tensor& base, const std::optional<at::Tensor>& base_scale,
                             const at::Tensor& value, const at::Tensor& mask,
                             const at::Tensor& weight) {
  const int64_t w = check_conv(value, mask, weight);
  const bool seq_major = check_conv_rows(base, "base", value, weight.size(0));
  const float* scale = nullptr;
  if (base_scale.has_value()) {
    const at::Tensor& s = *base_scale;
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.is_contiguous(),
                "yoso_cpu: base_scale must be a contiguous float32 CPU tensor");
    TORCH_CHECK(s.numel() * value.size(2) == base.numel(), "yoso_cpu: base_scale ", s.sizes(),
                " must hold one factor per row of base ", base.sizes());
    scale = s.data_ptr<float>();
  }
  return conv_forward(value, mask, weight, w, at::empty_like(base), seq_major,
                      base.data_ptr<float>(), scale);
}

std::tuple<at::Tensor, at::Tensor> sequence_conv_backward(const at::Tensor& grad,
                                                          const at::Tensor& value,
                                                          const at::Tensor& mask,
                                                          const at::Tensor& weight) {
  const int64_t w = check_conv(value, mask, weight);
  const bool seq_major = check_conv_rows(grad, "grad", value, weight.size(0));
  at::Tensor grad_value = at::empty_like(value);
  at::Tensor grad_weight = at::empty_like(weight);
  yoso_cpu::SequenceConvArgs args{value.data_ptr<float>(), mask.data_ptr<bool>(),
                                  weight.data_ptr<float>(), grad.data_ptr<float>(),
                                  grad_value.data_ptr<float>(), value.size(0), value.size(1),
                                  value.size(2), weight.size(0), w, seq_major};
  {
    pybind11::gil_scoped_release no_gil;
    yoso_cpu::sequence_conv_backward(args, grad_weight.data_ptr<float>());
  }
  return {grad_value, grad_weight};
}

bool set_isa(const std::string& name) { return yoso_cpu::set_isa(name.c_str()); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "YOSO attention CPU kernels (see src/kernels/reference.py for the semantics)";
  m.def("hash_gaussian", &hash_gaussian, "Random-hyperplane LSH codes", pybind11::arg("x"),
        pybind11::arg("projection"), pybind11::arg("hash_code_len"));
  m.def("hash_fast", &hash_fast, "Hadamard (fast) LSH codes", pybind11::arg("x"),
        pybind11::arg("signs"), pybind11::arg("num_hashes"), pybind11::arg("hash_code_len"));
  m.def("lsh_cumulation", &lsh_cumulation, "Hash-table cumulation averaged over hashes",
        pybind11::arg("query_mask"), pybind11::arg("query_codes"), pybind11::arg("key_mask"),
        pybind11::arg("key_codes"), pybind11::arg("value"), pybind11::arg("hash_code_len"));
  m.def("lsh_backward", &lsh_backward,
        "Fused LSH backward: (dQ, dK, dV) of the cumulation, surrogate factor tau/2 included",
        pybind11::arg("query_mask"), pybind11::arg("query_codes"), pybind11::arg("query"),
        pybind11::arg("key_mask"), pybind11::arg("key_codes"), pybind11::arg("key"),
        pybind11::arg("value"), pybind11::arg("grad"), pybind11::arg("hash_code_len"),
        pybind11::arg("bf16") = false);
  m.def("sequence_conv", &sequence_conv,
        "Depthwise convolution along the sequence of the masked values (YOSO-C)",
        pybind11::arg("value"), pybind11::arg("mask"), pybind11::arg("weight"));
  m.def("sequence_conv_add", &sequence_conv_add,
        "base * base_scale + sequence_conv(value, mask, weight); base [BH, n, d] or [BH/H, n, H, d]",
        pybind11::arg("base"), pybind11::arg("base_scale"), pybind11::arg("value"),
        pybind11::arg("mask"), pybind11::arg("weight"));
  m.def("sequence_conv_backward", &sequence_conv_backward,
        "(grad_value, grad_weight) of sequence_conv", pybind11::arg("grad"),
        pybind11::arg("value"), pybind11::arg("mask"), pybind11::arg("weight"));
  m.def("bf16_supported", &yoso_cpu::bf16_supported,
        "True when lsh_backward(bf16=True) runs bf16 contractions (AVX512-BF16) on this CPU");
  m.def("active_isa", [] { return std::string(yoso_cpu::active_isa()); },
        "Instruction-set variant the kernels use (avx512bf16, avx512, avx2 or baseline)");
  m.def("supported_isas", [] { return std::string(yoso_cpu::supported_isas()); },
        "Comma-separated variants this CPU can run, best first");
  m.def("set_isa", &set_isa, "Force a variant (for tests); False if unsupported",
        pybind11::arg("name"));
}
