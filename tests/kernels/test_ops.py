"""The compiled ops (``torch.ops.yoso.*``) against the reference, once per device.

One contract, parametrized over the devices: given the same hash codes / hash
parameters, every op must reproduce ``reference.py``. Cumulations agree to
float32 rounding relative to the sum of absolute terms (the reference run on
absolute values); codes are identical except Gaussian bits whose projection is
within 1e-5 of zero (summation order decides those). CUDA cases skip without a
GPU; CPU cases skip without a compiler and fail where the build fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from src.kernels import backends, build, ops
from src.kernels import reference as ref
from src.kernels.interface import yoso_attention
from src.kernels.options import YOSOOptions
from src.kernels.pipeline import draw_hash_parameters, hash_vectors, normalize_rows
from tests.kernels.cpu_isas import each_cpu_isa
from tests.kernels.extension import compiled_extension

CUDA_MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_MARKS)]
SUM_RTOL = 3e-5  # relative to sum_j |term_j|: float32 sums in any order


@pytest.fixture(params=DEVICES, scope="module")
def device(request) -> torch.device:
    """A device whose compiled kernels build here (built once, then cached)."""
    compiled_extension(request.param)
    return torch.device(request.param)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masks(gen: torch.Generator, bh: int, n: int) -> torch.Tensor:
    """Random padding masks; with BH >= 2 the first row is all padding."""
    mask = torch.rand(bh, n, generator=gen) > 0.2
    if bh >= 2:
        mask[0] = False
    return mask


# (BH, nq, nk, w = head dim, dv, m, tau): lengths 1, 31, 33, 1000, 4097; head dims
# 1, 24, 32, 64, 100; m 1, 16, 33; nq != nk; in-place (multiple of 16) and padded
# widths; tiny, direct and table buckets; hash splitting (BH = 1, 3).
CASES = [
    (2, 1, 1, 1, 1, 1, 1),
    (2, 31, 33, 24, 24, 16, 3),
    (3, 33, 31, 32, 32, 33, 8),
    (1, 1000, 1000, 64, 64, 16, 8),
    (2, 1000, 33, 100, 100, 1, 5),
    (3, 31, 1000, 1, 1, 33, 2),
    (2, 33, 33, 100, 24, 16, 16),
    (2, 1000, 1000, 24, 32, 1, 1),
    (2, 1, 1000, 64, 64, 33, 12),
    (2, 1000, 31, 32, 100, 16, 4),
    (1, 4097, 300, 32, 64, 3, 9),
]
CASE_IDS = ["bh{}-nq{}-nk{}-w{}-dv{}-m{}-tau{}".format(*case) for case in CASES]


def random_case(case, seed: int, device: torch.device) -> dict:
    bh, nq, nk, w, dv, m, tau = case
    g = generator(seed)
    c = dict(
        query_mask=masks(g, bh, nq),
        query_codes=torch.randint(0, 2**tau, (bh, nq, m), generator=g, dtype=torch.int32),
        key_mask=masks(g, bh, nk).flip(0),  # last row all padding
        key_codes=torch.randint(0, 2**tau, (bh, nk, m), generator=g, dtype=torch.int32),
        query=torch.randn(bh, nq, w, generator=g),
        key=torch.randn(bh, nk, w, generator=g),
        value=torch.randn(bh, nk, dv, generator=g),
        grad=torch.randn(bh, nq, dv, generator=g),
    )
    c = {name: t.to(device) for name, t in c.items()}
    c["tau"] = tau
    return c


def cumulation_args(c: dict, absolute: bool = False) -> tuple:
    value = c["value"].abs() if absolute else c["value"]
    return c["query_mask"], c["query_codes"], c["key_mask"], c["key_codes"], value, c["tau"]


def backward_args(c: dict, absolute: bool = False) -> tuple:
    f = torch.abs if absolute else (lambda t: t)
    return (c["query_mask"], c["query_codes"], f(c["query"]), c["key_mask"], c["key_codes"],
            f(c["key"]), f(c["value"]), f(c["grad"]), c["tau"])


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    """Equal up to float32 rounding of sums whose absolute terms add up to ``bound``."""
    assert got.dtype == torch.float32 and got.shape == want.shape and got.device == want.device
    assert bool(torch.isfinite(got).all())
    error = (got - want).abs()
    allowed = SUM_RTOL * bound + 1e-6
    assert bool((error <= allowed).all()), (
        f"max error {error.max().item():.3g}, worst ratio {(error / allowed).max().item():.3g}"
    )


def check_all_ops(c: dict) -> None:
    assert_sums_close(ops.lsh_cumulation(*cumulation_args(c)), ref.lsh_cumulation(*cumulation_args(c)),
                      ref.lsh_cumulation(*cumulation_args(c, absolute=True)))
    got = ops.lsh_backward(*backward_args(c))
    want = ref.lsh_backward(*backward_args(c))
    bound = ref.lsh_backward(*backward_args(c, absolute=True))
    for name, g, w, b in zip(("dq", "dk", "dv"), got, want, bound):
        assert g.shape == w.shape, name
        assert_sums_close(g, w, b)


# --------------------------------------------------------------------------- cumulations
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cumulation_and_backward_match_reference(device, case):
    c = random_case(case, seed=sum(case), device=device)
    check_all_ops(c)
    dq, dk, dv = ops.lsh_backward(*backward_args(c))
    assert not dq[~c["query_mask"]].any(), "padded queries get no gradient"
    assert not dk[~c["key_mask"]].any() and not dv[~c["key_mask"]].any(), "padded keys get none"
    if case[0] >= 2:  # row 0: no real query; last row: no real key -> everything 0
        out = ops.lsh_cumulation(*cumulation_args(c))
        assert not out[0].any() and not out[-1].any()


@pytest.mark.parametrize("tau", range(1, 17))
def test_every_code_length(device, tau):
    check_all_ops(random_case((2, 33, 40, 5, 7, 3, tau), seed=tau, device=device))


def test_skewed_buckets_use_tables_and_match(device):
    """Most rows in one bucket: the per-bucket table method and the direct one both run."""
    c = random_case((2, 700, 600, 64, 64, 4, 8), seed=5, device=device)
    g = generator(6)
    for key in ("query_codes", "key_codes"):
        hot = (torch.rand(c[key].shape, generator=g) < 0.7).to(device)
        c[key] = torch.where(hot, torch.full_like(c[key], 3), c[key])
    check_all_ops(c)


def test_repeated_calls_are_identical(device):
    """Scratch is reused across calls: a call in between with other shapes changes nothing."""
    c = random_case((3, 200, 150, 32, 48, 6, 7), seed=8, device=device)
    first = ops.lsh_backward(*backward_args(c)), ops.lsh_cumulation(*cumulation_args(c))
    check_all_ops(random_case((1, 90, 500, 100, 20, 5, 12), seed=9, device=device))
    second = ops.lsh_backward(*backward_args(c)), ops.lsh_cumulation(*cumulation_args(c))
    for a, b in zip((*first[0], first[1]), (*second[0], second[1])):
        if device.type == "cpu":  # same work split, same order: bit-identical
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_cpu_isa_variant():
    """The AVX-512, AVX2 and baseline builds of the CPU kernels all match the reference."""
    for _ in each_cpu_isa():
        for case in (CASES[1], CASES[3], CASES[6]):
            check_all_ops(random_case(case, seed=3, device=torch.device("cpu")))


def test_out_of_range_codes_and_bad_shapes_are_refused(device):
    c = random_case((2, 10, 12, 4, 4, 3, 4), seed=1, device=device)
    if device.type == "cpu":  # the CUDA kernels let such a hash collide with nothing instead
        with pytest.raises(RuntimeError, match=r"2\*\*hash_code_len"):
            ops.lsh_backward(*backward_args({**c, "key_codes": c["key_codes"] + 16}))
    with pytest.raises(RuntimeError, match="value|key_codes"):
        ops.lsh_cumulation(*cumulation_args({**c, "value": c["value"][:, :5]}))
    with pytest.raises(RuntimeError):
        ops.lsh_backward(*backward_args({**c, "grad": c["grad"][..., :2]}))
    if device.type == "cuda":  # the extension itself refuses host memory
        with pytest.raises(RuntimeError, match="CUDA tensor"):
            build.extension("cuda").hash_gaussian(torch.randn(2, 5, 8), torch.randn(2, 8, 12), 4)


# --------------------------------------------------------------------------- bf16 backward
def bf16_extension():
    """The CPU extension, where its bf16 backward runs (AVX512-BF16); skips otherwise."""
    extension = compiled_extension("cpu")
    if not extension.bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16: the bf16 option runs in float32")
    return extension


def with_floats(args: tuple, convert) -> tuple:
    return tuple(convert(a) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


# Direct buckets only, padded widths (24, 100), nq != nk, hash splits (BH = 1, 3).
BF16_CASES = [(1, 1000, 1000, 64, 64, 16, 8), (3, 300, 280, 32, 32, 33, 4),
              (1, 4097, 300, 32, 64, 3, 9), (3, 500, 700, 24, 100, 8, 5)]


def check_bf16_backward(c: dict) -> None:
    """FlashAttention-style bound: against a float64 truth, the bf16 kernel's max error
    is at most twice that of the reference run on bf16-rounded inputs (plus float32
    rounding of the sums); dV involves no contraction and equals the float32 kernel."""
    args = backward_args(c)
    truth = ref.lsh_backward(*with_floats(args, torch.Tensor.double))
    rounded = ref.lsh_backward(*with_floats(args, lambda t: t.bfloat16().float()))
    bound = ref.lsh_backward(*backward_args(c, absolute=True))
    got = ops.lsh_backward(*args, True)
    fp32 = ops.lsh_backward(*args, False)
    assert torch.equal(got[2], fp32[2])
    for name, g, t, r, b, f in zip(("dq", "dk"), got, truth, rounded, bound, fp32):
        error = (g.double() - t).abs().max().item()
        reference_error = (r.double() - t).abs().max().item()
        assert reference_error > 0 and not torch.equal(g, f), f"{name}: nothing was rounded"
        assert error <= 2 * reference_error + SUM_RTOL * b.max().item(), (name, error, reference_error)


@pytest.mark.parametrize("case", BF16_CASES, ids=["bh{}-nq{}-nk{}-w{}-dv{}-m{}-tau{}".format(*case)
                                                  for case in BF16_CASES])
def test_bf16_backward_error_is_within_twice_a_bf16_reference(case):
    bf16_extension()
    check_bf16_backward(random_case(case, seed=sum(case) + 1, device=torch.device("cpu")))


def test_bf16_backward_with_table_buckets():
    """Skewed buckets take the (float32) table method, the rest bf16: still within bound."""
    bf16_extension()
    c = random_case((1, 700, 600, 64, 64, 4, 8), seed=5, device=torch.device("cpu"))
    hot = torch.rand(c["query_codes"].shape, generator=generator(6)) < 0.7
    c["query_codes"] = torch.where(hot, torch.full_like(c["query_codes"], 3), c["query_codes"])
    c["key_codes"] = torch.where(hot[:, :600], torch.full_like(c["key_codes"], 3), c["key_codes"])
    check_bf16_backward(c)


def test_bf16_option_without_avx512_bf16_is_float32():
    """On a variant without AVX512-BF16 the option changes nothing (the plain path)."""
    extension = bf16_extension()
    best = extension.active_isa()
    c = random_case(BF16_CASES[0], seed=2, device=torch.device("cpu"))
    try:
        assert extension.set_isa("avx512") and not extension.bf16_supported()
        for got, want in zip(ops.lsh_backward(*backward_args(c), True), ops.lsh_backward(*backward_args(c))):
            assert torch.equal(got, want)
    finally:
        assert extension.set_isa(best)


def test_backward_precision_option_through_yoso_attention():
    """"auto" (default) is float32 for float32 inputs and bf16 for bf16 inputs; "bfloat16"
    changes the query/key gradients (not the value's) for both; any other name is refused."""
    bf16_extension()
    g = generator(4)
    q, k, v = (torch.randn(2, 2, 300, 32, generator=g) for _ in range(3))
    upstream = torch.randn(2, 2, 300, 32, generator=g)

    def grads(dtype, **precision):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
        out = yoso_attention(*leaves, num_hashes=8, hash_code_len=5, generator=generator(7), **precision)
        (out.float() * upstream).sum().backward()
        return [leaf.grad for leaf in leaves]

    for dtype in (torch.float32, torch.bfloat16):
        default, fp32, bf16 = grads(dtype), grads(dtype, backward_precision="float32"), \
            grads(dtype, backward_precision="bfloat16")
        same_as = bf16 if dtype == torch.bfloat16 else fp32
        assert all(torch.equal(a, b) for a, b in zip(default, same_as))
        assert not torch.equal(bf16[0], fp32[0]) and not torch.equal(bf16[1], fp32[1])
        assert torch.equal(bf16[2], fp32[2])
    with pytest.raises(ValueError, match="backward_precision"):
        yoso_attention(q, k, v, backward_precision="half", hash_code_len=5)


# --------------------------------------------------------------------------- hashing
def assert_codes_match(got, want, values64, tau):
    """Identical codes except bits whose exact projection is within 1e-5 of 0."""
    assert got.dtype == torch.int32 and got.shape == want.shape
    assert bool(((got >= 0) & (got < 2**tau)).all())
    shifts = torch.arange(tau, device=got.device, dtype=torch.int32)
    differing = (((got ^ want).unsqueeze(-1) >> shifts) & 1).bool()
    assert bool((values64.abs()[differing] < 1e-5).all()), f"{int(differing.sum())} bits differ"


def fast_rotations64(x, signs, num_hashes, tau):
    bh, n, d = x.shape
    width = signs.shape[-1]
    y = torch.nn.functional.pad(x.double(), (0, width - d)).unsqueeze(2)
    for level in range(3):
        y = ref.hadamard_transform(y * signs[:, level].double().unsqueeze(1))
    return y[..., : width // tau * tau].reshape(bh, n, -1, tau)[:, :, :num_hashes]


@pytest.mark.parametrize(
    ("n", "d", "m", "tau"),
    [(1, 1, 1, 1), (31, 24, 16, 3), (33, 32, 33, 8), (1000, 64, 16, 8), (1000, 100, 33, 5),
     (33, 64, 1, 16), (1000, 1, 33, 2), (4097, 32, 16, 11)],
)
@pytest.mark.parametrize("hashing", ["gaussian", "fast"])
def test_hashing_matches_reference(device, hashing, n, d, m, tau):
    g = generator(n + d + m + tau)
    x = normalize_rows(torch.randn(3, n, d, generator=g)).to(device)
    x[:, -1] = 0.0  # a zero row (padding after normalisation): all bits 0
    options = YOSOOptions(tau, m, hashing=hashing)
    params = draw_hash_parameters(3, d, options, torch.device("cpu"), g).to(device)
    got = hash_vectors(x, params, options, ops)
    want = hash_vectors(x, params, options, ref)
    if hashing == "gaussian":
        values = torch.bmm(x.double(), params.double()).reshape(3, n, m, tau)
    else:
        values = fast_rotations64(x, params, m, tau)
    assert_codes_match(got, want, values, tau)
    assert not bool(got[:, -1].any())


@pytest.mark.parametrize("hashing", ["fast", "gaussian"])
@pytest.mark.parametrize("tau", [2, 8])
def test_collision_rates_match_theory(device, hashing, tau):
    """P[h(u) = h(v)] = (1 - theta/pi)^tau: 2000 draws x m hashes, 5 binomial sigmas
    (+0.003 for the Hadamard hash, whose structured rotation is only nearly uniform)."""
    g = generator(tau)
    d, heads, m = 64, 2000, 64 // tau
    thetas = [math.pi / 8, math.pi / 4, math.pi / 2, 3 * math.pi / 4]
    u = normalize_rows(torch.randn(d, generator=g))
    w = torch.randn(d, generator=g)
    w = normalize_rows(w - (w @ u) * u)
    points = torch.stack([u] + [math.cos(t) * u + math.sin(t) * w for t in thetas])
    x = points.expand(heads, -1, -1).contiguous().to(device)
    options = YOSOOptions(tau, m, hashing=hashing)
    params = draw_hash_parameters(heads, d, options, torch.device("cpu"), g).to(device)
    codes = hash_vectors(x, params, options, ops)
    for index, theta in enumerate(thetas, start=1):
        rate = (codes[:, 0] == codes[:, index]).double().mean().item()
        expected = (1 - theta / math.pi) ** tau
        tolerance = 5 * math.sqrt(expected * (1 - expected) / (heads * m)) + 0.003
        assert abs(rate - expected) <= tolerance, (theta, rate, expected)


# ----------------------------------------------------------------- through yoso_attention
@pytest.mark.parametrize("hashing", ["fast", "gaussian"])
@pytest.mark.parametrize("lsh_backward", [True, False])
def test_attention_matches_reference_backend(device, hashing, lsh_backward):
    g = generator(21)
    batch, heads, n, d = 2, 3, 97, 32
    q, k, v, upstream = (torch.randn(batch, heads, n, d, generator=g).to(device) for _ in range(4))
    mask = torch.ones(batch, n, device=device)
    mask[1, 60:] = 0
    results = {}
    for name in (device.type, "reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = yoso_attention(*leaves, mask, num_hashes=16, hash_code_len=6, hashing=hashing,
                             lsh_backward=lsh_backward, backend=name, generator=generator(5))
        out.backward(upstream)
        results[name] = (out.detach(), *(leaf.grad for leaf in leaves))
    for got, want in zip(results[device.type], results["reference"]):
        assert bool(torch.isfinite(got).all())
        close = (got - want).abs() <= 1e-3 * want.abs() + 1e-4 * want.abs().max()
        # Gaussian codes come from different summation orders: a tie may flip a bit.
        assert close.float().mean().item() > (0.999 if hashing == "fast" else 0.99)
    assert not results[device.type][0][1, :, 60:].any()  # padded queries output 0


def test_ops_trace_as_custom_ops(device):
    """torch.compile(fullgraph=True) sees yoso::* nodes; opcheck validates the fake kernels."""
    from torch.library import opcheck

    c = random_case((2, 40, 50, 8, 16, 3, 5), seed=2, device=device)

    def fn(*args):
        return ops.lsh_cumulation(*args, 5) * 2.0

    args = cumulation_args(c)[:-1]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=0, atol=0)
    x = torch.randn(2, 20, 8, device=device)
    opcheck(ops.lsh_cumulation, cumulation_args(c))
    opcheck(ops.lsh_backward, backward_args(c))
    opcheck(ops.hash_gaussian, (x, torch.randn(2, 8, 12, device=device), 4))
    signs = draw_hash_parameters(2, 8, YOSOOptions(4, 3, hashing="fast"), torch.device("cpu")).to(device)
    opcheck(ops.hash_fast, (x, signs, 3, 4))


# --------------------------------------------------------------------------- selection
@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A fresh build state in which no compiler can be found."""
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.setattr(build, "_FAILED", {})
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv(build.BUILD_DIR_ENV_VAR, str(tmp_path / "build"))


def test_build_without_compiler_is_a_clear_error(no_compiler):
    assert not build.compiler_available()
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        build.extension("cpu")


def test_auto_falls_back_to_reference_with_one_warning(no_compiler):
    g = generator(0)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g) for _ in range(3))

    def run(backend):
        return yoso_attention(q, k, v, num_hashes=4, hash_code_len=4, backend=backend,
                              generator=generator(3))

    with pytest.warns(RuntimeWarning, match="Falling back") as record:
        first, second = run(None), run("auto")
    fallbacks = [w for w in record if "Falling back" in str(w.message)]
    assert len(fallbacks) == 1 and "C++ compiler" in str(fallbacks[0].message)
    expected = run("reference")
    assert torch.equal(first, expected) and torch.equal(second, expected)
    with pytest.raises(RuntimeError, match="unavailable"):  # asked for by name: an error
        run("cpu")


def test_backend_names_and_devices_are_checked(monkeypatch):
    cpu = torch.device("cpu")
    q = torch.randn(1, 1, 4, 8)
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "reference")
    assert backends.select_kernels(cpu) is ref
    monkeypatch.delenv(backends.BACKEND_ENV_VAR)
    with pytest.raises(ValueError, match="unknown YOSO backend"):
        yoso_attention(q, q, q, backend="triton", hash_code_len=4)
    # A CPU tensor handed to the CUDA kernels is refused, never silently run on CPU.
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        yoso_attention(q, q, q, backend="cuda", hash_code_len=4)


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ops.NONDETERMINISTIC_ON_CUDA)
def test_cuda_kernels_with_float_atomics_declare_themselves_nondeterministic(name, monkeypatch):
    """``use_deterministic_algorithms(True)`` is an error naming the op (a warning with warn_only);
    checked before the extension is touched, so it runs without a GPU."""
    def no_build(device_type):
        raise AssertionError("the extension must not be reached")

    monkeypatch.setattr(build, "extension", no_build)
    kernel = ops._kernel("cuda", name)
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match=rf"yoso::{name} on CUDA .* no deterministic implementation"):
            kernel()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match=rf"yoso::{name}"), pytest.raises(AssertionError):
            kernel()
        torch.use_deterministic_algorithms(False)
        with pytest.raises(AssertionError):  # no alert: straight to the extension
            kernel()
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert not any(n in ops.NONDETERMINISTIC_ON_CUDA for n in ("hash_gaussian", "hash_fast"))


def test_cpu_kernels_never_alert_under_deterministic_algorithms():
    extension = compiled_extension("cpu")
    g = generator(5)
    qm = torch.ones(2, 30, dtype=torch.bool)
    qc = torch.randint(0, 16, (2, 30, 3), generator=g, dtype=torch.int32)
    value = torch.randn(2, 30, 4, generator=g)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first = ops.lsh_cumulation(qm, qc, qm, qc, value, 4)
        second = ops.lsh_cumulation(qm, qc, qm, qc, value, 4)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert extension is not None and torch.equal(first, second)
