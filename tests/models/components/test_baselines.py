"""The LRA baseline attentions (Nyströmformer, Performer, Linformer) against their formulas.

Each reference below is an independent float64 computation written from the papers'
equations (explicit matrices, per-sequence loops), not a call into the modules' helpers.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from src.models.components.encoder import TransformerEncoder
from src.models.components.linformer import LinformerAttention
from src.models.components.nystrom import NystromAttention, iterative_pinv
from src.models.components.performer import PerformerAttention

ROOT = Path(__file__).resolve().parents[3]

BASELINES = {
    "nystrom": partial(NystromAttention, num_landmarks=8, conv_window=5),
    "nystrom-noconv": partial(NystromAttention, num_landmarks=8, conv_window=None),
    "performer": partial(PerformerAttention, num_features=32),
    "linformer": partial(LinformerAttention, max_length=160, projected_length=16),
    "linformer-shared": partial(LinformerAttention, max_length=160, projected_length=16, share_kv=True),
}


def inputs(b=2, h=2, n=37, d=8, seed=0, dtype=torch.float64, scale=1.0):
    """Row 0 is end-padded (about half real), row 1 has holes in the middle (a general 0/1 mask)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (scale * torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(b, n, dtype=torch.int64)
    mask[0, n // 2 + 1 :] = 0
    if b > 1:
        mask[1, n // 4 : n // 4 + n // 8] = 0
    return q, k, v, mask


def build(name, h=2, d=8):
    torch.manual_seed(0)
    return BASELINES[name](h, d).double().eval()


def zero_padded_rows(out, mask):
    return out * mask[:, None, :, None].to(out.dtype)


# ---------------------------------------------------------------- the shared contract


@pytest.mark.parametrize("n", [1, 33, 130])
@pytest.mark.parametrize("name", list(BASELINES))
def test_odd_lengths_give_finite_outputs_of_the_right_shape(name, n):
    q, k, v, mask = inputs(n=n)
    if n == 1:
        mask[0] = 0
    out = build(name)(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n", [33, 130])
@pytest.mark.parametrize("name", list(BASELINES))
def test_padded_positions_never_change_outputs_and_padded_rows_are_zero(name, n):
    q, k, v, mask = inputs(n=n, seed=1)
    module = build(name)
    padded = (mask == 0)[:, None, :, None]
    before = module(q, k, v, mask)
    noise = 10 * torch.randn_like(k)
    noise[0, 0, -1, 0] = float("inf")  # even non-finite padding must not leak
    noisy = [torch.where(padded, noise, q), torch.where(padded, noise, k), torch.where(padded, -noise, v)]
    after = module(*noisy, mask)
    assert torch.equal(before, after)
    assert before.permute(0, 2, 1, 3)[mask == 0].abs().max() == 0


@pytest.mark.parametrize("name", list(BASELINES))
def test_all_padding_rows_are_zero_not_nan(name):
    q, k, v, mask = inputs(n=33, seed=2)
    mask[1] = 0
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = build(name)(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("name", list(BASELINES))
def test_gradients_are_finite_and_reach_inputs_and_parameters(name):
    q, k, v, mask = inputs(n=33, seed=3)
    module = build(name).train()
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    module(*leaves, mask).pow(2).sum().backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0
    for pname, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(BASELINES))
def test_bfloat16_inputs_keep_their_dtype(name):
    q, k, v, mask = inputs(n=33, seed=4, dtype=torch.float32)
    module = build(name).float()
    full = module(q, k, v, mask)
    half = module.to(torch.bfloat16)(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", list(BASELINES))
def test_padding_at_the_end_is_invisible(name):
    """A sequence padded to a longer length gives the same real rows as the bare sequence."""
    q, k, v, _ = inputs(b=1, n=70, seed=5)
    real = 40
    mask = torch.zeros(1, 70, dtype=torch.bool)
    mask[0, :real] = True
    module = build(name)
    padded = module(q, k, v, mask)[:, :, :real]
    bare = module(q[:, :, :real], k[:, :, :real], v[:, :, :real], mask[:, :real])
    torch.testing.assert_close(padded, bare, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(BASELINES))
def test_plugs_into_the_encoder_and_trains_a_step(name):
    torch.manual_seed(0)
    options = {
        "nystrom": partial(NystromAttention, num_landmarks=4, conv_window=3),
        "nystrom-noconv": partial(NystromAttention, num_landmarks=4, conv_window=None),
        "performer": partial(PerformerAttention, num_features=16),
        "linformer": partial(LinformerAttention, max_length=32, projected_length=8),
        "linformer-shared": partial(LinformerAttention, max_length=32, projected_length=8, share_kv=True),
    }
    encoder = TransformerEncoder(17, 32, attention=options[name], dim=16, depth=1, num_heads=2, head_dim=8)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 17, (3, 21), generator=g)
    mask = torch.ones(3, 21, dtype=torch.bool)
    mask[0, 15:] = False
    ids[~mask] = 0
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    before = [p.detach().clone() for p in encoder.parameters()]
    target = torch.randn(int(mask.sum()), 16, generator=g)
    loss = (encoder(ids, mask)[mask] - target).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
    optimizer.step()
    attention = encoder.layers[0].attention.attention
    assert isinstance(attention, options[name].func)
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    for p in attention.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("stem", ["nystrom", "performer", "linformer"])
def test_attention_config_overlays_build_the_module(stem):
    config = yaml.safe_load((ROOT / "configs" / "attention" / f"{stem}.yaml").read_text())
    attention = config["model"]["init_args"]["encoder"]["init_args"]["attention"]
    assert set(config) == {"model"} and set(config["model"]["init_args"]) == {"encoder"}
    module_name, _, class_name = attention["class_path"].rpartition(".")
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    module = cls(2, 32, **attention.get("init_args", {}))
    q, k, v, mask = inputs(b=1, h=2, n=100, d=32, dtype=torch.float32)
    assert module(q, k, v, mask).shape == q.shape


# ---------------------------------------------------------------- Nyströmformer


def nystrom_reference(q, k, v, mask, num_landmarks):
    """The Nyström formula per sequence and head with torch.linalg.pinv (conv skip not included).

    Landmark ``j`` is the mean of the real tokens with rank in ``[ceil(j l/L), ceil((j+1) l/L))``
    (``l`` real tokens); empty segments are dropped.
    """
    out = torch.zeros_like(q)
    d = q.shape[-1]
    for b in range(q.shape[0]):
        real = torch.nonzero(mask[b]).flatten()
        count = len(real)
        if count == 0:
            continue
        bounds = [math.ceil(j * count / num_landmarks) for j in range(num_landmarks + 1)]
        segments = [real[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        for h in range(q.shape[1]):
            qr, kr, vr = q[b, h, real], k[b, h, real], v[b, h, real]
            q_land = torch.stack([q[b, h, s].mean(0) for s in segments])
            k_land = torch.stack([k[b, h, s].mean(0) for s in segments])
            kernel_1 = torch.softmax(qr @ k_land.T / math.sqrt(d), dim=-1)
            kernel_2 = torch.softmax(q_land @ k_land.T / math.sqrt(d), dim=-1)
            kernel_3 = torch.softmax(q_land @ kr.T / math.sqrt(d), dim=-1)
            out[b, h, real] = kernel_1 @ torch.linalg.pinv(kernel_2) @ kernel_3 @ vr
    return out


@pytest.mark.parametrize("n, landmarks", [(37, 8), (64, 8), (130, 16)])
def test_nystrom_matches_formula_with_exact_pinv(n, landmarks):
    """Many iterations: the iterative pseudo-inverse has converged to ``pinv``.

    Row 0 holds n//2+1 real tokens, row 1 has a hole; a third row with fewer real
    tokens than landmarks checks empty segments.
    """
    q, k, v, mask = inputs(b=3, n=n, seed=6, scale=2.0)
    mask[2, landmarks // 2 :] = 0
    module = NystromAttention(2, 8, num_landmarks=landmarks, pinv_iterations=40, conv_window=None)
    torch.testing.assert_close(module(q, k, v, mask), nystrom_reference(q, k, v, mask, landmarks),
                               rtol=1e-7, atol=1e-7)


def test_nystrom_with_few_tokens_is_exact_softmax():
    q, k, v, mask = inputs(n=16, seed=7)
    module = NystromAttention(2, 8, num_landmarks=16, conv_window=None)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    want = zero_padded_rows(torch.softmax(scores, dim=-1) @ v, mask)
    torch.testing.assert_close(module(q, k, v, mask), want, rtol=1e-10, atol=1e-10)


def test_nystrom_conv_skip_is_a_depthwise_conv_of_masked_values():
    q, k, v, mask = inputs(n=40, seed=8)
    torch.manual_seed(1)
    module = NystromAttention(2, 8, num_landmarks=8, conv_window=7).double()
    plain = NystromAttention(2, 8, num_landmarks=8, conv_window=None)
    filters = module.conv.weight.detach()  # [H, window]
    b, h, n, d = v.shape
    masked = v * mask[:, None, :, None]
    seqs = masked.permute(0, 3, 1, 2).reshape(b * d, h, n)
    conv = F.conv1d(seqs, filters[:, None, :], padding=3, groups=h).reshape(b, d, h, n).permute(0, 2, 3, 1)
    want = zero_padded_rows(plain(q, k, v, mask) + conv, mask)
    torch.testing.assert_close(module(q, k, v, mask), want, rtol=1e-10, atol=1e-10)


def test_iterative_pinv_converges_and_ignores_zero_rows_and_columns():
    g = torch.Generator().manual_seed(9)
    a = torch.softmax(2 * torch.randn(6, 6, generator=g, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(iterative_pinv(a, 30), torch.linalg.inv(a), rtol=1e-8, atol=1e-8)
    embedded = torch.zeros(8, 8, dtype=torch.float64)
    embedded[:6, :6] = a
    want = torch.zeros_like(embedded)
    want[:6, :6] = torch.linalg.inv(a)
    torch.testing.assert_close(iterative_pinv(embedded, 30), want, rtol=1e-8, atol=1e-8)


def test_nystrom_rejects_bad_options():
    with pytest.raises(ValueError, match="odd"):
        NystromAttention(2, 8, conv_window=4)
    with pytest.raises(ValueError, match="num_landmarks"):
        NystromAttention(2, 8, num_landmarks=0)


# ---------------------------------------------------------------- Performer


def performer_reference(q, k, v, mask, w):
    """FAVOR+ without stabilisation: phi(x) = exp(W x' - |x'|^2/2)/sqrt(m), x' = x d^(-1/4)."""
    d, m = q.shape[-1], w.shape[0]
    w = w.double()

    def phi(x):
        x = x / d**0.25
        return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    keep = mask[:, None, :, None].double()
    phi_q, phi_k = phi(q), phi(k) * keep
    kernel = phi_q @ phi_k.transpose(-1, -2)  # [B, H, n, n], explicit
    return zero_padded_rows(kernel @ (v * keep) / kernel.sum(-1, keepdim=True), mask)


def test_performer_eval_matches_formula_with_its_fixed_features():
    q, k, v, mask = inputs(n=33, seed=10)
    module = build("performer")
    torch.testing.assert_close(module(q, k, v, mask), performer_reference(q, k, v, mask, module.projection),
                               rtol=1e-10, atol=1e-10)


def test_performer_features_are_orthogonal_blocks_with_random_norms():
    torch.manual_seed(11)
    w = PerformerAttention(2, 8, num_features=20).projection  # blocks of 8, 8, 4 rows
    assert w.shape == (20, 8)
    for lo, hi in [(0, 8), (8, 16), (16, 20)]:
        gram = w[lo:hi] @ w[lo:hi].T
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 1e-4
    norms = w.norm(dim=-1)
    assert norms.std() > 0.1  # chi-distributed, not all sqrt(d)


def test_performer_error_vs_softmax_shrinks_with_more_features():
    """Mean relative error over 10 feature draws: each 8x more features cuts it by at least 20%.

    (Measured: about 0.60, 0.42, 0.25 for m = 8, 64, 512; the ratio estimator converges
    roughly like 1/sqrt(m) once m is large.)
    """
    q, k, v, mask = inputs(n=64, seed=12, scale=0.7)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    exact = zero_padded_rows(torch.softmax(scores, dim=-1) @ v, mask)
    errors = {}
    for m in (8, 64, 512):
        runs = []
        for seed in range(10):
            torch.manual_seed(seed)
            out = PerformerAttention(2, 8, num_features=m).double().eval()(q, k, v, mask)
            runs.append(((out - exact).norm() / exact.norm()).item())
        errors[m] = sum(runs) / len(runs)
    assert errors[512] < 0.8 * errors[64] and errors[64] < 0.8 * errors[8], errors
    assert errors[512] < 0.3, errors


def test_performer_redraws_in_training_and_is_deterministic_in_eval():
    q, k, v, mask = inputs(n=33, seed=13)
    module = build("performer").train()
    first, second = module(q, k, v, mask), module(q, k, v, mask)
    assert not torch.allclose(first, second)
    torch.manual_seed(3)
    replay_a = module(q, k, v, mask)
    torch.manual_seed(3)
    replay_b = module(q, k, v, mask)
    assert torch.equal(replay_a, replay_b)  # seeding replays the draws

    module.eval()
    assert torch.equal(module(q, k, v, mask), module(q, k, v, mask))
    state = module.state_dict()
    assert "projection" in state
    torch.manual_seed(99)
    restored = PerformerAttention(2, 8, num_features=32).double().eval()
    restored.load_state_dict(state)
    assert torch.equal(restored(q, k, v, mask), module(q, k, v, mask))

    fixed = PerformerAttention(2, 8, num_features=32, redraw_in_training=False).double().train()
    assert torch.equal(fixed(q, k, v, mask), fixed(q, k, v, mask))


# ---------------------------------------------------------------- Linformer


@pytest.mark.parametrize("share_kv", [False, True])
@pytest.mark.parametrize("n", [1, 33, 130])
def test_linformer_matches_formula(n, share_kv):
    q, k, v, mask = inputs(n=n, seed=14)
    torch.manual_seed(0)
    module = LinformerAttention(2, 8, max_length=160, projected_length=16, share_kv=share_kv).double()
    e = module.key_projection.detach()[:, :n]
    f = e if share_kv else module.value_projection.detach()[:, :n]
    keep = mask[:, None, :, None].double()
    k_proj = torch.einsum("rn,bhnd->bhrd", e, k * keep)
    v_proj = torch.einsum("rn,bhnd->bhrd", f, v * keep)
    weights = torch.softmax(q @ k_proj.transpose(-1, -2) / math.sqrt(8), dim=-1)
    want = zero_padded_rows(weights @ v_proj, mask)
    torch.testing.assert_close(module(q, k, v, mask), want, rtol=1e-10, atol=1e-10)
    assert share_kv == (module.value_projection is None)


def test_linformer_too_long_input_is_a_clear_error():
    q, k, v, mask = inputs(n=40)
    module = LinformerAttention(2, 8, max_length=32, projected_length=8)
    with pytest.raises(ValueError, match=r"40.*max_length 32.*attention\.init_args\.max_length"):
        module(q, k, v, mask)
