"""The reference YOSO ops against closed forms, dense re-computations and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.kernels import reference as ref
from src.kernels import yoso_attention
from src.kernels.options import YOSOOptions
from src.kernels.pipeline import draw_hash_parameters

CPU = torch.device("cpu")


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def dense_expectation_output(q, k, v, mask, tau):
    """Independent float64 YOSO-E: Y_i = m_i * sum_j m_j (1 - arccos(q.k)/pi)^tau v_j."""
    qn = q.double().numpy()
    kn = k.double().numpy()
    qn = qn / np.linalg.norm(qn, axis=-1, keepdims=True)
    kn = kn / np.linalg.norm(kn, axis=-1, keepdims=True)
    cos = np.clip(np.einsum("bhid,bhjd->bhij", qn, kn), -1, 1)
    w = (1 - np.arccos(cos) / np.pi) ** tau
    m = mask.double().numpy()
    y = np.einsum("bhij,bj,bhjd->bhid", w, m, v.double().numpy()) * m[:, None, :, None]
    return torch.from_numpy(y)


def pair_at_angle(theta: float, dim: int, gen: torch.Generator) -> torch.Tensor:
    a = unit(torch.randn(dim, generator=gen, dtype=torch.float64))
    b = torch.randn(dim, generator=gen, dtype=torch.float64)
    b = unit(b - (b @ a) * a)
    return torch.stack([a, math.cos(theta) * a + math.sin(theta) * b]).float()


def random_inputs(b=2, h=2, n=40, d=16, seed=0, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    mask = torch.ones(b, n)
    if pad_from is not None:
        mask[-1, pad_from:] = 0
    return q, k, v, mask


def test_expectation_matches_dense_float64_formula():
    q, k, v, mask = random_inputs(n=37, d=24, pad_from=20)
    for tau in (1, 8, 12):
        got = yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)
        want = dense_expectation_output(q, k, v, mask, tau)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        normalized = yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau)
        norms = want.norm(dim=-1, keepdim=True)
        want_n = torch.where(norms > 0, want / norms, torch.zeros_like(want))
        torch.testing.assert_close(normalized.double(), want_n, rtol=1e-4, atol=1e-5)


def test_lsh_cumulation_equals_dense_collision_matrix():
    """Given codes, the table-based cumulation equals the dense collision average."""
    g = torch.Generator().manual_seed(1)
    bh, nq, nk, m, tau, d = 3, 29, 41, 7, 3, 5
    qc = torch.randint(0, 2**tau, (bh, nq, m), generator=g, dtype=torch.int32)
    kc = torch.randint(0, 2**tau, (bh, nk, m), generator=g, dtype=torch.int32)
    qm = torch.rand(bh, nq, generator=g) > 0.2
    km = torch.rand(bh, nk, generator=g) > 0.2
    v = torch.randn(bh, nk, d, generator=g)
    collide = (qc[:, :, None, :] == kc[:, None, :, :]).double().mean(-1)  # [bh, nq, nk]
    collide = collide * qm[:, :, None] * km[:, None, :]
    want = collide @ v.double()
    got = ref.lsh_cumulation(qm, qc, km, kc, v, tau)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)

    a = torch.randn(bh, nq, 6, generator=g)
    bw = torch.randn(bh, nk, 6, generator=g)
    weighted = collide * (a.double() @ bw.double().transpose(1, 2))
    for method in ("auto", "pairs", "tables"):
        got_w = ref.lsh_weighted_cumulation(qm, qc, a, km, kc, bw, v, tau, method=method)
        torch.testing.assert_close(got_w.double(), weighted @ v.double(), rtol=1e-5, atol=1e-5)


def test_hadamard_transform_matches_matrix():
    size = 16
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = torch.randn(3, size)
    torch.testing.assert_close(ref.hadamard_transform(x), x @ h.T)


@pytest.mark.parametrize("hashing", ["gaussian", "fast"])
def test_collision_rate_matches_closed_form(hashing):
    """P[h(q) = h(k)] = (1 - theta/pi)^tau, checked within 4 binomial sigmas."""
    gen = torch.Generator().manual_seed(2)
    dim, trials, m = 64, 1500, 8
    for theta in (0.3, 1.0, 2.0):
        pair = pair_at_angle(theta, dim, gen)
        x = pair.unsqueeze(0).repeat(trials, 1, 1)  # [trials, 2, d]
        for tau in (1, 4, 8):
            params = draw_hash_parameters(trials, dim, YOSOOptions(tau, m, hashing=hashing), CPU, gen)
            if hashing == "gaussian":
                codes = ref.hash_gaussian(x, params, tau)
            else:
                codes = ref.hash_fast(x, params, m, tau)
            assert codes.dtype == torch.int32 and codes.shape == (trials, 2, m)
            assert int(codes.min()) >= 0 and int(codes.max()) < 2**tau
            rate = (codes[:, 0] == codes[:, 1]).double().mean().item()
            p = (1 - theta / math.pi) ** tau
            # Hashes of one trial share a rotation (fast) so use trials, not m*trials, for sigma.
            sigma = math.sqrt(p * (1 - p) / trials)
            assert abs(rate - p) < 4 * sigma + 1e-3, (hashing, theta, tau, rate, p)


def test_keys_are_hashed_as_keys():
    """Pitfall: a helper that hashed queries twice makes collisions ignore the keys."""
    gen = torch.Generator().manual_seed(3)
    q = unit(torch.randn(1, 8, 16, generator=gen))
    k = -q  # antipodal keys never collide with their query
    params = draw_hash_parameters(1, 16, YOSOOptions(6, 4), CPU, gen)
    qc = ref.hash_gaussian(q, params, 6)
    kc = ref.hash_gaussian(k, params, 6)
    assert not bool((qc == kc).any())


def test_sampling_is_unbiased_and_error_falls_like_inverse_sqrt_m():
    q, k, v, mask = random_inputs(b=1, h=2, n=48, d=16, seed=4, pad_from=None)
    tau = 4
    exact = yoso_attention(q, k, v, mask, expectation=True, hash_code_len=tau, normalize_output=False)
    gen = torch.Generator().manual_seed(5)

    def draw(m):
        return yoso_attention(
            q, k, v, mask, num_hashes=m, hash_code_len=tau, normalize_output=False, generator=gen
        )

    def rel_err(x):
        return ((x - exact).norm() / exact.norm()).item()

    # Mean of 4096 hashes: relative error ~ err(1)/64; allow a 3x margin.
    mean = torch.stack([draw(256) for _ in range(16)]).mean(0)
    single = np.mean([rel_err(draw(1)) for _ in range(16)])
    assert rel_err(mean) < 3 * single / 64

    ms = [4, 16, 64, 256]
    errors = [np.mean([rel_err(draw(m)) for _ in range(8)]) for m in ms]
    slope = np.polyfit(np.log(ms), np.log(errors), 1)[0]
    assert -0.6 < slope < -0.4, (errors, slope)


def test_same_seed_same_output_and_new_hashes_each_call():
    q, k, v, mask = random_inputs(seed=6)
    torch.manual_seed(11)
    first = yoso_attention(q, k, v, mask, num_hashes=8, hash_code_len=8)
    second = yoso_attention(q, k, v, mask, num_hashes=8, hash_code_len=8)
    torch.manual_seed(11)
    replay = yoso_attention(q, k, v, mask, num_hashes=8, hash_code_len=8)
    assert torch.equal(first, replay)
    assert not torch.equal(first, second)


def test_bad_arguments_get_clear_errors():
    q, k, v, mask = random_inputs()
    with pytest.raises(ValueError, match="hash_code_len"):
        yoso_attention(q, k, v, mask, hash_code_len=0)
    with pytest.raises(ValueError, match="num_hashes"):
        yoso_attention(q, k, v, mask, num_hashes=0, hash_code_len=8)
    with pytest.raises(ValueError, match="only 0"):
        yoso_attention(q, k, v, 1 + mask / 10000, hash_code_len=8)
    with pytest.raises(ValueError, match="shape"):
        yoso_attention(q, k, v, mask[:, :-1], hash_code_len=8)
    with pytest.raises(ValueError, match="hashing"):
        yoso_attention(q, k, v, mask, hashing="rotations", hash_code_len=8)
    with pytest.raises(ValueError, match="batch, heads"):
        yoso_attention(q[0], k[0], v[0], mask, hash_code_len=8)
    with pytest.raises(TypeError, match="hash_code_len"):  # no default: tau belongs to the task
        yoso_attention(q, k, v, mask)
    with pytest.raises(TypeError, match="its options are: hash_code_len, num_hashes"):
        yoso_attention(q, k, v, mask, hash_code_len=8, num_hash=4)
    with pytest.raises(ValueError, match="not both"):
        yoso_attention(q, k, v, mask, options=YOSOOptions(8), num_hashes=4)
