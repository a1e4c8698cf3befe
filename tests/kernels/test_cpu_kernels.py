"""Compiled C++ CPU backend vs the reference ops (``src/kernels/reference.py``).

Given the same hash codes / hash parameters, the backend must reproduce the
reference up to float32 rounding (reference-relative tolerances), its hash codes
must be identical (Gaussian: a flip is only allowed where a projection is
within 1e-5 of 0, where summation order decides the sign), and the
``yoso_attention`` gradients must match. The extension is built once per
session (session fixture); without a compiler these tests skip, while the
fallback tests still run.
"""

from __future__ import annotations

import math

import pytest
import torch

from src.kernels import backends, build, cpu_backend, reference
from src.kernels.interface import draw_hash_parameters, hash_codes, normalize_rows, yoso_attention

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def cpu():
    """The compiled backend (built on first use; later sessions load the cache)."""
    try:
        return cpu_backend.load()
    except RuntimeError as error:
        pytest.skip(f"the C++ CPU backend cannot be built here: {error}")


@pytest.fixture(params=["best", "other-isas"])
def isa(request, cpu):
    """Run a test with the best ISA variant, then with every other supported one."""
    extension = cpu.extension
    best = extension.active_isa()
    names = (
        [best]
        if request.param == "best"
        else [name for name in extension.supported_isas().split(",") if name != best]
    )
    if not names:
        pytest.skip("this CPU supports a single ISA variant")
    yield names
    assert extension.set_isa(best)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal up to float32 rounding, relative to the reference's magnitude."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected.float(), rtol=rtol, atol=1e-5 * max(scale, 1e-6))


def masks(generator: torch.Generator, bh: int, n: int) -> torch.Tensor:
    """Random padding masks; with BH >= 2 the first row is all padding."""
    mask = torch.rand(bh, n, generator=generator) > 0.2
    if bh >= 2:
        mask[0] = False
    return mask


# (BH, nq, nk, w / head dim, dv, m, tau): a sample of n in {1, 31, 33, 1000},
# d in {1, 24, 32, 64, 100}, m in {1, 16, 33}, tau in 1..16, chosen so that every
# value appears, nq != nk occurs, and both the in-place (dv % 16 == 0) and the
# padded (dv % 16 != 0) kernel paths, tiny / direct / table buckets are covered.
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
    (2, 200, 300, 64, 64, 2, 6),
]


def random_case(case, seed: int):
    bh, nq, nk, w, dv, m, tau = case
    g = torch.Generator().manual_seed(seed)
    return dict(
        query_mask=masks(g, bh, nq),
        query_codes=torch.randint(0, 2**tau, (bh, nq, m), generator=g, dtype=torch.int32),
        key_mask=masks(g, bh, nk).flip(0),  # last row all padding
        key_codes=torch.randint(0, 2**tau, (bh, nk, m), generator=g, dtype=torch.int32),
        query_weight=torch.randn(bh, nq, w, generator=g),
        key_weight=torch.randn(bh, nk, w, generator=g),
        value=torch.randn(bh, nk, dv, generator=g),
        tau=tau,
    )


def cumulation_args(c):
    return (c["query_mask"], c["query_codes"], c["key_mask"], c["key_codes"], c["value"], c["tau"])


def weighted_args(c):
    return (
        c["query_mask"],
        c["query_codes"],
        c["query_weight"],
        c["key_mask"],
        c["key_codes"],
        c["key_weight"],
        c["value"],
        c["tau"],
    )


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "bh{}-nq{}-nk{}-w{}-dv{}-m{}-tau{}".format(*c)
)
def test_cumulations_match_reference(cpu, isa, case):
    c = random_case(case, seed=sum(case))
    expected = reference.lsh_cumulation(*cumulation_args(c))
    expected_w = reference.lsh_weighted_cumulation(*weighted_args(c))
    for name in isa:
        assert cpu.extension.set_isa(name)
        close(cpu.lsh_cumulation(*cumulation_args(c)), expected)
        close(cpu.lsh_weighted_cumulation(*weighted_args(c)), expected_w)
    # padded queries give 0; all-padding key rows give 0 everywhere
    if case[0] >= 2:
        out = cpu.lsh_weighted_cumulation(*weighted_args(c))
        assert not out[0].any() and not out[-1].any()


@pytest.mark.parametrize("tau", range(1, 17))
def test_cumulations_every_code_length(cpu, tau):
    c = random_case((2, 33, 40, 5, 7, 3, tau), seed=tau)
    close(cpu.lsh_cumulation(*cumulation_args(c)), reference.lsh_cumulation(*cumulation_args(c)))
    close(
        cpu.lsh_weighted_cumulation(*weighted_args(c)),
        reference.lsh_weighted_cumulation(*weighted_args(c)),
    )


def test_cumulations_skewed_buckets(cpu):
    """Huge buckets (most rows share a code): the chunked table method and the direct one."""
    g = torch.Generator().manual_seed(5)
    c = random_case((2, 700, 600, 64, 64, 4, 8), seed=5)
    for key in ("query_codes", "key_codes"):
        codes = c[key]
        hot = torch.rand(codes.shape, generator=g) < 0.7
        c[key] = torch.where(hot, torch.full_like(codes, 3), codes)
    close(cpu.lsh_cumulation(*cumulation_args(c)), reference.lsh_cumulation(*cumulation_args(c)))
    close(
        cpu.lsh_weighted_cumulation(*weighted_args(c)),
        reference.lsh_weighted_cumulation(*weighted_args(c)),
    )


def test_cumulations_convert_half_masks_and_noncontiguous(cpu):
    c = random_case((2, 50, 60, 24, 32, 4, 6), seed=11)
    expected = reference.lsh_weighted_cumulation(*weighted_args(c))
    # float masks, int64 codes, half weights, non-contiguous value
    value_t = c["value"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not value_t.is_contiguous()
    out = cpu.lsh_weighted_cumulation(
        c["query_mask"].float(),
        c["query_codes"].long(),
        c["query_weight"].half(),
        c["key_mask"].to(torch.uint8),
        c["key_codes"].long(),
        c["key_weight"].bfloat16(),
        value_t,
        c["tau"],
    )
    close(
        out,
        reference.lsh_weighted_cumulation(
            c["query_mask"],
            c["query_codes"],
            c["query_weight"].half(),
            c["key_mask"],
            c["key_codes"],
            c["key_weight"].bfloat16(),
            value_t,
            c["tau"],
        ),
    )
    close(out, expected, rtol=1e-2)  # half inputs: only half precision left
    half = cpu.lsh_cumulation(
        c["query_mask"],
        c["query_codes"],
        c["key_mask"],
        c["key_codes"],
        c["value"].half(),
        c["tau"],
    )
    assert half.dtype == torch.float32
    close(half, reference.lsh_cumulation(*cumulation_args({**c, "value": c["value"].half()})))


def test_cumulation_errors(cpu):
    c = random_case((2, 10, 12, 4, 4, 3, 4), seed=1)
    with pytest.raises(ValueError, match="masks"):
        cpu.lsh_cumulation(c["query_mask"][:, :5], *cumulation_args(c)[1:])
    with pytest.raises(ValueError, match="value"):
        cpu.lsh_cumulation(*cumulation_args({**c, "value": c["value"][:, :5]}))
    with pytest.raises(ValueError, match="weights"):
        cpu.lsh_weighted_cumulation(*weighted_args({**c, "key_weight": c["key_weight"][..., :2]}))
    with pytest.raises(RuntimeError, match=r"2\*\*hash_code_len"):
        cpu.lsh_cumulation(*cumulation_args({**c, "key_codes": c["key_codes"] + 16}))
    with pytest.raises(ValueError, match="hash_code_len"):
        cpu.lsh_cumulation(*cumulation_args({**c, "tau": 17}))


# ---------------------------------------------------------------------------
# Hashing


def gaussian_mismatches_are_ties(x, projection, tau, actual, expected) -> float:
    """Assert codes differ only where a projection is ~0; return the fraction that differ."""
    differ = actual != expected
    if differ.any():
        projected = torch.bmm(x.double(), projection.double())  # [BH, n, m * tau]
        near_zero = projected.abs().reshape(*expected.shape, tau) < 1e-5
        flipped = (actual ^ expected).unsqueeze(-1) >> torch.arange(tau, dtype=torch.int32) & 1
        assert bool(near_zero[flipped.bool()].all()), "a code bit flipped away from a tie"
    return differ.float().mean().item()


@pytest.mark.parametrize(
    ("n", "d", "m", "tau"),
    [
        (1, 1, 1, 1),
        (31, 24, 16, 3),
        (33, 32, 33, 8),
        (1000, 64, 16, 8),
        (1000, 100, 33, 5),
        (33, 64, 1, 16),
        (31, 100, 16, 12),
        (1000, 1, 33, 2),
    ],
)
def test_gaussian_hash_matches_reference(cpu, isa, n, d, m, tau):
    g = torch.Generator().manual_seed(n + d + m + tau)
    x = normalize_rows(torch.randn(3, n, d, generator=g))
    projection = draw_hash_parameters(3, d, m, tau, "gaussian", CPU, g)
    expected = reference.hash_gaussian(x, projection, tau)
    for name in isa:
        assert cpu.extension.set_isa(name)
        actual = cpu.hash_gaussian(x, projection, tau)
        assert actual.dtype == torch.int32 and actual.shape == (3, n, m)
        assert gaussian_mismatches_are_ties(x, projection, tau, actual, expected) < 1e-3


def test_gaussian_hash_ties_are_the_only_mismatches(cpu):
    """Rows orthogonal to a direction put projections at ~0: flips allowed exactly there."""
    g = torch.Generator().manual_seed(3)
    projection = torch.randn(2, 32, 4 * 6, generator=g)
    x = torch.randn(2, 200, 32, generator=g)
    direction = projection[:, :, :1] / projection[:, :, :1].norm(dim=1, keepdim=True)
    x = x - (x @ direction) * direction.transpose(1, 2)  # projection 0 is now a rounding error
    expected = reference.hash_gaussian(x, projection, 6)
    actual = cpu.hash_gaussian(x, projection, 6)
    gaussian_mismatches_are_ties(x, projection, 6, actual, expected)


@pytest.mark.parametrize("tau", range(1, 17))
@pytest.mark.parametrize("d", [1, 24, 32, 64, 100])
def test_fast_hash_identical_to_reference(cpu, d, tau):
    m = (1, 16, 33)[(d + tau) % 3]
    g = torch.Generator().manual_seed(d * 100 + tau)
    x = normalize_rows(torch.randn(2, 33, d, generator=g))
    signs = draw_hash_parameters(2, d, m, tau, "fast", CPU, g)
    assert torch.equal(cpu.hash_fast(x, signs, m, tau), reference.hash_fast(x, signs, m, tau))


def test_fast_hash_every_isa_and_input_kind(cpu, isa):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 1000, 64, generator=g)
    signs = draw_hash_parameters(3, 64, 33, 9, "fast", CPU, g)
    expected = reference.hash_fast(x, signs, 33, 9)
    x_strided = torch.randn(3, 64, 1000, generator=g).transpose(1, 2)
    for name in isa:
        assert cpu.extension.set_isa(name)
        assert torch.equal(cpu.hash_fast(x, signs, 33, 9), expected)
        assert torch.equal(cpu.hash_fast(x, signs.to(torch.int8), 33, 9), expected)
        assert torch.equal(
            cpu.hash_fast(x.half(), signs, 33, 9), reference.hash_fast(x.half(), signs, 33, 9)
        )
        assert torch.equal(
            cpu.hash_fast(x_strided, signs, 33, 9), reference.hash_fast(x_strided, signs, 33, 9)
        )
    bad = torch.ones(3, 3, 1, 32)
    with pytest.raises(ValueError, match="signs"):
        cpu.hash_fast(x, bad, 33, 9)


def test_gaussian_hash_half_and_noncontiguous(cpu):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 48, 300, generator=g).transpose(1, 2)[:, :, :40]
    projection = torch.randn(2, 40, 5 * 7, generator=g)
    for inputs in ((x, projection), (x.half(), projection.bfloat16())):
        expected = reference.hash_gaussian(*inputs, 7)
        gaussian_mismatches_are_ties(
            inputs[0].float(), inputs[1].float(), 7, cpu.hash_gaussian(*inputs, 7), expected
        )
    with pytest.raises(ValueError, match="projection"):
        cpu.hash_gaussian(x, projection[:, :, :34], 7)


@pytest.mark.parametrize("hashing", ["fast", "gaussian"])
@pytest.mark.parametrize("tau", [2, 4, 8])
def test_collision_rates_match_theory(cpu, hashing, tau):
    """P[h(u) = h(v)] = (1 - theta/pi)^tau for unit vectors at angle theta.

    2000 independent hash draws (heads) x m hashes per pair; tolerance 5 binomial
    standard deviations of the 2000*m samples (+0.003 for the Hadamard hash,
    whose structured rotation is only approximately uniform).
    """
    g = torch.Generator().manual_seed(tau)
    d, heads, m = 64, 2000, 64 // tau
    thetas = [math.pi / 8, math.pi / 4, math.pi / 2, 3 * math.pi / 4]
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    w = torch.randn(d, generator=g)
    w = w - (w @ u) * u
    w = w / w.norm()
    points = torch.stack([u] + [math.cos(t) * u + math.sin(t) * w for t in thetas])
    x = points.expand(heads, -1, -1).contiguous()
    params = draw_hash_parameters(heads, d, m, tau, hashing, CPU, g)
    codes = hash_codes(x, params, m, tau, hashing, cpu)
    samples = heads * m
    for index, theta in enumerate(thetas, start=1):
        rate = (codes[:, 0] == codes[:, index]).double().mean().item()
        expected = (1 - theta / math.pi) ** tau
        tolerance = 5 * math.sqrt(expected * (1 - expected) / samples) + 0.003
        assert abs(rate - expected) <= tolerance, (theta, rate, expected)


# ---------------------------------------------------------------------------
# yoso_attention through the backend


@pytest.mark.parametrize("hashing", ["fast", "gaussian"])
@pytest.mark.parametrize("lsh_backward", [True, False])
def test_attention_forward_backward_match_reference(cpu, hashing, lsh_backward):
    g = torch.Generator().manual_seed(21)
    batch, heads, n, d = 2, 3, 97, 32
    q, k, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    mask = torch.ones(batch, n)
    mask[1, 60:] = 0
    upstream = torch.randn(batch, heads, n, d, generator=g)
    results = {}
    for name in ("cpu", "reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = yoso_attention(
            *leaves,
            mask,
            num_hashes=16,
            hash_code_len=6,
            hashing=hashing,
            lsh_backward=lsh_backward,
            backend=name,
            generator=torch.Generator().manual_seed(5),
        )
        out.backward(upstream)
        results[name] = (out.detach(), *(leaf.grad for leaf in leaves))
    for actual, expected in zip(results["cpu"], results["reference"]):
        assert torch.isfinite(actual).all()
        close(actual, expected, rtol=1e-3)
    assert not results["cpu"][0][1, :, 60:].any()  # padded queries output 0


def test_attention_half_inputs(cpu):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g).half() for _ in range(3))
    outs = [
        yoso_attention(
            q,
            k,
            v,
            num_hashes=8,
            hash_code_len=5,
            hashing="fast",
            backend=name,
            generator=torch.Generator().manual_seed(1),
        )
        for name in ("cpu", "reference")
    ]
    assert outs[0].dtype == torch.float16
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3)


def test_torch_compile_traces_the_custom_ops(cpu):
    """fullgraph=True: the backend's ops are traced as yoso::* custom ops, no graph break."""
    from torch.library import opcheck

    c = random_case((2, 40, 50, 8, 16, 3, 5), seed=2)

    def fn(qm, qc, km, kc, value):
        return cpu.lsh_cumulation(qm, qc, km, kc, value, 5) * 2.0

    args = cumulation_args(c)[:-1]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), fn(*args), rtol=0, atol=0)
    from src.kernels import custom_ops

    x = torch.randn(2, 20, 8)
    opcheck(custom_ops.lsh_cumulation, cumulation_args(c))
    opcheck(custom_ops.lsh_weighted_cumulation, weighted_args(c))
    opcheck(custom_ops.hash_gaussian, (x, torch.randn(2, 8, 12), 4))
    opcheck(custom_ops.hash_fast, (x, draw_hash_parameters(2, 8, 3, 4, "fast", CPU), 3, 4))


# ---------------------------------------------------------------------------
# Selection and fallback


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget which backends were built / failed / warned about (restored afterwards)."""
    monkeypatch.setattr(backends, "_LOADED", {"reference": backends.REFERENCE})
    monkeypatch.setattr(backends, "_FAILED", {})
    monkeypatch.setattr(backends, "_WARNED", set())
    monkeypatch.setattr(cpu_backend, "_BUILT", {})
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.delenv(backends.BACKEND_ENV_VAR, raising=False)


def test_build_without_compiler_is_a_clear_error(monkeypatch, tmp_path, fresh_registry):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv(build.BUILD_DIR_ENV_VAR, str(tmp_path / "build"))
    assert not build.compiler_available()
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        cpu_backend.load()


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch, tmp_path, fresh_registry):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv(build.BUILD_DIR_ENV_VAR, str(tmp_path / "build"))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g) for _ in range(3))

    def run(backend):
        return yoso_attention(
            q,
            k,
            v,
            num_hashes=4,
            hash_code_len=4,
            backend=backend,
            generator=torch.Generator().manual_seed(3),
        )

    with pytest.warns(RuntimeWarning, match="Falling back") as record:
        first, second = run(None), run("auto")
    fallbacks = [w for w in record if "Falling back" in str(w.message)]
    assert len(fallbacks) == 1 and "C++ compiler" in str(fallbacks[0].message)
    expected = run("reference")
    assert torch.equal(first, expected) and torch.equal(second, expected)
    with pytest.raises(RuntimeError, match="unavailable"):  # asked for by name: an error
        run("cpu")


def test_env_var_forces_reference(monkeypatch, cpu):
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "reference")
    assert backends.resolve_backend(CPU) is backends.REFERENCE
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, "cpu")
    assert backends.resolve_backend(CPU).name == "cpu"
    monkeypatch.delenv(backends.BACKEND_ENV_VAR)
    assert backends.resolve_backend(CPU).name == "cpu"  # auto on a CPU tensor
