"""YOSO-C's sequence convolution: the reference against ``conv1d`` and autograd, the
compiled op against the reference (every CPU variant), masks, determinism, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.kernels import ops
from src.kernels import reference as ref
from src.kernels.autograd import ConvolvedOutput, RowNormalize, SequenceConvolution
from src.kernels.interface import sequence_conv
from tests.kernels.cpu_isas import each_cpu_isa
from tests.kernels.extension import compiled_extension

SUM_RTOL = 3e-5  # relative to the sum of absolute terms: float32 sums in any order
CUDA_MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# (BH, heads, n, d, w): widths below, at and above a vector and not multiples of 16;
# sequences shorter than the filter, one row, several row blocks with a tail.
CASES = [
    (2, 1, 1, 1, 1),
    (2, 2, 5, 7, 9),
    (4, 2, 300, 32, 31),
    (3, 3, 129, 20, 3),
    (2, 2, 200, 64, 65),
    (2, 1, 257, 100, 31),
    (6, 2, 40, 16, 35),
]
CASE_IDS = ["bh{}-h{}-n{}-d{}-w{}".format(*case) for case in CASES]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA_MARKS)], scope="module")
def device(request) -> torch.device:
    if request.param == "cpu":
        compiled_extension("cpu")
    return torch.device(request.param)


def random_case(case, seed: int, dtype=torch.float32, device="cpu"):
    bh, heads, n, d, w = case
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(bh, n, d, generator=g, dtype=dtype)
    mask = torch.rand(bh, n, generator=g) > 0.25
    weight = torch.randn(heads, w, generator=g, dtype=dtype)
    grad = torch.randn(bh, n, d, generator=g, dtype=dtype)
    return [t.to(device) for t in (value, mask, weight, grad)]


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    error = (got - want).abs()
    allowed = SUM_RTOL * bound + 1e-6
    assert bool((error <= allowed).all()), f"max error {error.max().item():.3g}"


def check_op(value, mask, weight, grad) -> None:
    """Forward and both gradients of the compiled op against the reference."""
    assert_sums_close(ops.sequence_conv(value, mask, weight), ref.sequence_conv(value, mask, weight),
                      ref.sequence_conv(value.abs(), mask, weight.abs()))
    got = ops.sequence_conv_backward(grad, value, mask, weight)
    want = ref.sequence_conv_backward(grad, value, mask, weight)
    bound = ref.sequence_conv_backward(grad.abs(), value.abs(), mask, weight.abs())
    for g, w, b in zip(got, want, bound):
        assert_sums_close(g, w, b)
    check_attention_layout(value, mask, weight, grad)


def seq_major(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """``[BH, n, d]`` rows laid out as the attention output, ``[B, n, H, d]`` (a copy)."""
    bh, n, d = rows.shape
    return rows.reshape(bh // heads, heads, n, d).transpose(1, 2).clone(memory_format=torch.contiguous_format)


def check_attention_layout(value, mask, weight, grad) -> None:
    """``sequence_conv_add`` in both layouts, with and without row factors, and the
    backward of a ``[B, n, H, d]`` gradient."""
    heads = weight.shape[0]
    conv = ops.sequence_conv(value, mask, weight)
    base = torch.randn_like(value)
    scale = torch.rand(*value.shape[:2], 1, device=value.device) + 0.5
    assert_sums_close(ops.sequence_conv_add(base, None, value, mask, weight), base + conv,
                      base.abs() + conv.abs())
    assert_sums_close(ops.sequence_conv_add(base, scale, value, mask, weight), base * scale + conv,
                      (base * scale).abs() + conv.abs())
    rows, row_scale = seq_major(base, heads), seq_major(scale, heads)
    out = ops.sequence_conv_add(rows, row_scale, value, mask, weight)
    for h in range(heads):  # head h of batch b is row b * heads + h of the flat layout
        want = (base * scale + conv)[h::heads]
        assert_sums_close(out[:, :, h], want, (base * scale).abs()[h::heads] + conv.abs()[h::heads])
    flat_grads = ops.sequence_conv_backward(grad, value, mask, weight)
    for got, want in zip(ops.sequence_conv_backward(seq_major(grad, heads), value, mask, weight), flat_grads):
        assert torch.equal(got, want), "the gradient's layout changes only where rows are read"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_is_a_depthwise_conv1d_of_the_masked_values(case):
    """Independent definition: ``conv1d`` with groups = heads over zeroed padded rows."""
    value, mask, weight, _ = random_case(case, seed=1, dtype=torch.float64)
    bh, heads, n, d, w = case
    masked = value * mask[..., None]
    rows = masked.reshape(bh // heads, heads, n, d).permute(0, 3, 1, 2).reshape(-1, heads, n)
    want = F.conv1d(rows, weight[:, None, :], padding=w // 2, groups=heads)
    want = want.reshape(bh // heads, d, heads, n).permute(0, 2, 3, 1).reshape(bh, n, d)
    torch.testing.assert_close(ref.sequence_conv(value, mask, weight), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_backward_is_the_derivative(case):
    """The explicit backward formulas equal autograd through the reference forward (float64)."""
    value, mask, weight, grad = random_case(case, seed=2, dtype=torch.float64)
    value.requires_grad_(True)
    weight.requires_grad_(True)
    want = torch.autograd.grad(ref.sequence_conv(value, mask, weight), (value, weight), grad)
    got = ref.sequence_conv_backward(grad, value.detach(), mask, weight.detach())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_op_matches_reference(device, case):
    check_op(*random_case(case, seed=sum(case), device=device))


def test_every_cpu_isa_variant():
    for _ in each_cpu_isa():
        for case in (CASES[1], CASES[2], CASES[5]):
            check_op(*random_case(case, seed=7))


def test_masked_rows_are_ignored_even_when_not_finite(device):
    value, mask, weight, grad = random_case((4, 2, 150, 24, 31), seed=3, device=device)
    poisoned = value.masked_fill(~mask[..., None], float("nan"))
    out = ops.sequence_conv(poisoned, mask, weight)
    assert torch.equal(out, ops.sequence_conv(value, mask, weight))
    grad_value, grad_weight = ops.sequence_conv_backward(grad, poisoned, mask, weight)
    assert bool(torch.isfinite(grad_weight).all())
    assert not grad_value[~mask].any(), "padded rows get no gradient"


def test_filter_gradient_does_not_depend_on_thread_count():
    compiled_extension("cpu")
    value, mask, weight, grad = random_case((6, 2, 700, 32, 31), seed=4)
    threads = torch.get_num_threads()
    try:
        rows = seq_major(grad, 2)  # the attention layout's units span both heads
        torch.set_num_threads(1)
        one = [*ops.sequence_conv_backward(grad, value, mask, weight),
               *ops.sequence_conv_backward(rows, value, mask, weight)]
        torch.set_num_threads(2)
        two = [*ops.sequence_conv_backward(grad, value, mask, weight),
               *ops.sequence_conv_backward(rows, value, mask, weight)]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_entry_point_gradients_and_dtypes(device):
    """``sequence_conv`` on [B, H, n, d]: float64 via the reference passes gradcheck; bf16 in, bf16 out."""
    g = torch.Generator().manual_seed(5)
    value = torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64).to(device)
    weight = torch.randn(3, 5, generator=g, dtype=torch.float64).to(device)
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4]).to(device)
    value.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, w: sequence_conv(v, mask, w), (value, weight))
    out32 = sequence_conv(value.detach().float(), mask, weight.detach().float())
    out16 = sequence_conv(value.detach().bfloat16(), mask, weight.detach().float())
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=2e-2, atol=5e-2)
    flat_value = value.detach().float().reshape(6, 11, 4)
    flat_mask = mask.bool()[:, None, :].expand(2, 3, 11).reshape(6, 11)
    want = SequenceConvolution.apply(flat_value, flat_mask, weight.detach().float(), ref)
    torch.testing.assert_close(out32.reshape(6, 11, 4), want, rtol=1e-5, atol=1e-6)


def test_reference_adds_in_either_layout():
    """The reference's ``sequence_conv_add``/backward on ``[B, n, H, d]`` rows, head by head."""
    value, mask, weight, grad = random_case((6, 3, 30, 5, 7), seed=9, dtype=torch.float64)
    base = torch.randn(2, 30, 3, 5, dtype=torch.float64)
    scale = torch.rand(2, 30, 3, 1, dtype=torch.float64)
    out = ref.sequence_conv_add(base, scale, value, mask, weight)
    conv = ref.sequence_conv(value, mask, weight)
    grad_rows = torch.randn(2, 30, 3, 5, dtype=torch.float64)
    flat_grad = torch.stack([grad_rows[b, :, h] for b in range(2) for h in range(3)])
    got = ref.sequence_conv_backward(grad_rows, value, mask, weight)
    want = ref.sequence_conv_backward(flat_grad, value, mask, weight)
    for b in range(2):
        for h in range(3):
            torch.testing.assert_close(out[b, :, h], base[b, :, h] * scale[b, :, h] + conv[b * 3 + h])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("normalize", [True, False])
def test_convolved_output_is_the_normalised_rows_plus_the_convolution(normalize):
    """``ConvolvedOutput`` (float64, reference ops) passes gradcheck and equals its composition."""
    g = torch.Generator().manual_seed(10)
    y = torch.randn(2, 9, 3, 4, generator=g, dtype=torch.float64)
    value = torch.randn(6, 9, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) > 0.3
    weight = torch.randn(3, 5, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (y, value, weight)]

    def fused(y, value, weight):
        return ConvolvedOutput.apply(y, value, mask, weight, normalize, ref)

    def composed(y, value, weight):
        rows = RowNormalize.apply(y) if normalize else y
        conv = ref.sequence_conv(value, mask, weight)
        return rows + conv.reshape(2, 3, 9, 4).transpose(1, 2)

    assert torch.autograd.gradcheck(fused, inputs)
    with torch.no_grad():
        y[1, 2, 0] = 0.0  # an all-zero row (not for gradcheck: x / |x| jumps at 0) stays 0
    torch.testing.assert_close(fused(*inputs), composed(*inputs))
    upstream = torch.randn(2, 9, 3, 4, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(fused(*inputs), inputs, upstream),
                    torch.autograd.grad(composed(*inputs), inputs, upstream)):
        torch.testing.assert_close(a, b)


def saved_bytes(run) -> int:
    """Bytes of the distinct storages that autograd saves while ``run()`` builds its graph."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def test_convolution_saves_nothing_but_its_filters():
    """A YOSO-C layer keeps no tensor beyond YOSO-m's: the output projection saves the sum,
    and the sum is all the convolution and normalisation keep (not the rows before it)."""
    from src.kernels.interface import yoso_attention

    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 3, 64, 16, generator=g, requires_grad=True) for _ in range(3))
    weight = torch.randn(3, 9, generator=g, requires_grad=True)
    projection = torch.randn(48, 48, generator=g, requires_grad=True)
    kwargs = dict(num_hashes=4, hash_code_len=6)

    def layer(**conv):
        heads = yoso_attention(q, k, v, **kwargs, **conv)
        return heads.transpose(1, 2).reshape(2, 64, 48) @ projection  # merge heads, project

    without, with_conv = saved_bytes(layer), saved_bytes(lambda: layer(conv_weight=weight))
    assert with_conv - without <= weight.numel() * weight.element_size(), (without, with_conv)


def test_bad_inputs_are_refused_with_the_reason():
    value = torch.randn(2, 3, 10, 4)
    with pytest.raises(ValueError, match="odd window"):
        sequence_conv(value, None, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\[3, w\]"):
        sequence_conv(value, None, torch.randn(2, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        sequence_conv(value, torch.ones(2, 9), torch.randn(3, 5))
    with pytest.raises(ValueError, match="head_dim"):
        sequence_conv(value[0], None, torch.randn(3, 5))
    extension = compiled_extension("cpu")
    flat, mask = value.reshape(6, 10, 4), torch.ones(6, 10, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="does not divide"):
        extension.sequence_conv(flat, mask, torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="odd"):
        extension.sequence_conv(flat, mask, torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="mask"):
        extension.sequence_conv(flat, mask[:, :9].contiguous(), torch.randn(3, 5))
    with pytest.raises(RuntimeError, match=r"must be \[batch, n, heads, d\] = \[2, 10, 3, 4\]"):
        extension.sequence_conv_add(torch.zeros(2, 3, 10, 4), None, flat, mask, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="one factor per row"):
        extension.sequence_conv_add(torch.zeros(2, 10, 3, 4), torch.ones(2, 10, 1), flat, mask,
                                    torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="does not match value"):
        extension.sequence_conv_backward(torch.zeros(6, 10, 5), flat, mask, torch.randn(3, 5))


def test_ops_pass_opcheck(device):
    """The fake kernels agree with the real ones (shapes, dtypes) for torch.compile."""
    from torch.library import opcheck

    value, mask, weight, grad = random_case((4, 2, 70, 24, 7), seed=6, device=device)
    opcheck(ops.sequence_conv, (value, mask, weight))
    opcheck(ops.sequence_conv_backward, (grad, value, mask, weight))
    rows = seq_major(grad, 2)
    opcheck(ops.sequence_conv_add, (rows, None, value, mask, weight))
    opcheck(ops.sequence_conv_add, (rows, torch.rand(2, 70, 2, 1, device=device), value, mask, weight))
    opcheck(ops.sequence_conv_backward, (rows, value, mask, weight))


def test_yoso_attention_adds_the_convolution_of_the_masked_values():
    """``conv_weight`` = the attention with the same hashes plus ``sequence_conv``; gradients too."""
    from src.kernels.interface import yoso_attention

    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g, requires_grad=True) for _ in range(3))
    weight = torch.randn(3, 5, generator=g, requires_grad=True)
    mask = torch.ones(2, 40)
    mask[1, 25:] = 0
    kwargs = dict(num_hashes=4, hash_code_len=5)
    torch.manual_seed(0)
    got = yoso_attention(q, k, v, mask, conv_weight=weight, **kwargs)
    torch.manual_seed(0)
    want = yoso_attention(q, k, v, mask, **kwargs) + sequence_conv(v, mask, weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    upstream = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad(got, (q, k, v, weight), upstream)
    wanted = torch.autograd.grad(want, (q, k, v, weight), upstream)
    for a, b in zip(grads, wanted):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    merged = got.transpose(1, 2)  # heads merge without a copy
    assert merged.is_contiguous()
    with pytest.raises(ValueError, match="odd window"):
        yoso_attention(q, k, v, mask, conv_weight=torch.randn(3, 4), **kwargs)
    with pytest.raises(ValueError, match="as many queries as keys"):
        yoso_attention(q[:, :, :30], k, v, mask, conv_weight=weight, **kwargs)
