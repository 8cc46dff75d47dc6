"""The document-indexed training conv (h1r.model.kernels.doc_conv) against the reference conv with resets:
values and gradients of x, weight and bias; documents starting anywhere (one-token documents, starts on and
across the kernels' 16- to 128-token blocks), odd channel counts past 64- to 256-channel blocks, strided inputs."""

import pytest
import torch

from h1r.model import ssd
from tests.helpers import kernel_device, rel

DEV = kernel_device()
pytestmark = pytest.mark.gpu if DEV == "cuda" else []

from h1r.model.kernels.doc_conv import doc_conv  # noqa: E402
from h1r.model.ssd_packed import doc_ids_from_cu  # noqa: E402


CASES = [([70], 40), ([1, 63, 64, 1, 2, 66], 200), ([3, 129], 131), ([130], 257)]


# the default launches, and the former ones (other tile shapes: blocks of tokens across documents, past the end)
LAUNCHES = [None, {"fwd": (64, 128, 4), "bwd_g": (64, 128, 4), "bwd_dx": (64, 128, 4)},
            {"fwd": (32, 128, 4), "bwd_g": (16, 64, 4, 3), "bwd_dx": (16, 256, 4)}]  # bwd_g over 3 blocks a program


@pytest.mark.parametrize("lens,C", CASES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("launch", LAUNCHES, ids=["default", "former", "g4"])
def test_values_and_gradients_match_the_reference(lens, C, bias, launch, monkeypatch):
    import h1r.model.kernels.doc_conv as DC

    if launch is not None:
        monkeypatch.setattr(DC, "LAUNCH", launch)
    g = torch.Generator().manual_seed(C + len(lens))
    n = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    wide = torch.randn(n, C + 9, generator=g)
    w = torch.randn(C, 4, generator=g) * 0.5
    b = torch.randn(C, generator=g) if bias else None
    dy = torch.randn(n, C, generator=g)
    reset = torch.zeros(1, n, dtype=torch.bool)
    reset[0, cu[:-1]] = True

    leaves = [t.clone().to(DEV).requires_grad_() for t in (wide, w) + ((b,) if bias else ())]
    y = doc_conv(leaves[0][:, 5:5 + C], leaves[1], leaves[2] if bias else None, doc_ids_from_cu(cu.to(DEV), n))
    y.backward(dy.to(DEV))
    ref_leaves = [t.clone().double().requires_grad_() for t in (wide, w) + ((b,) if bias else ())]
    yr, _ = ssd.causal_conv1d(ref_leaves[0][None, :, 5:5 + C], ref_leaves[1], ref_leaves[2] if bias else None,
                              reset=reset)
    yr[0].backward(dy.double())
    assert y.dtype == torch.float32 and y.shape == (n, C)
    assert rel(y.double().cpu(), yr[0].detach()) < 1e-5
    for got, want in zip(leaves, ref_leaves):
        assert rel(got.grad.double().cpu(), want.grad) < 1e-5
    assert leaves[0].grad[:, :5].abs().max() == 0  # columns outside the slice get no gradient


def test_documents_do_not_leak():
    """Changing the last tokens of one document changes nothing in the next."""
    n, C = 80, 16
    x = torch.randn(n, C, device=DEV)
    w, doc = torch.randn(C, 4, device=DEV), doc_ids_from_cu(torch.tensor([0, 37, 80], device=DEV), n)
    y0 = doc_conv(x, w, None, doc)
    x2 = x.clone()
    x2[34:37] += 5.0
    y1 = doc_conv(x2, w, None, doc)
    assert torch.equal(y0[37:], y1[37:]) and not torch.equal(y0[34:37], y1[34:37])


def test_bad_shapes_are_named_errors():
    x, w, doc = torch.randn(10, 8, device=DEV), torch.randn(8, 4, device=DEV), torch.zeros(10, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="document index"):
        doc_conv(x, w, None, doc[:9])
    with pytest.raises(ValueError, match="weight"):
        doc_conv(x, torch.randn(7, 4, device=DEV), None, doc)
    with pytest.raises(ValueError, match="unit stride"):
        doc_conv(x.t().contiguous().t(), w, None, doc)


@pytest.mark.skipif(DEV != "cuda", reason="the interpreter's bf16 arithmetic is not the GPU's")
def test_bf16_inputs_stay_close():
    g = torch.Generator().manual_seed(5)
    lens, C = [300, 17, 700], 1000
    n = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    x, w, b = torch.randn(n, C, generator=g), torch.randn(C, 4, generator=g) * 0.5, torch.randn(C, generator=g)
    dy = torch.randn(n, C, generator=g)
    doc = doc_ids_from_cu(cu.to(DEV), n)
    outs = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = [x.to(DEV, dtype).requires_grad_(), w.to(DEV).requires_grad_(), b.to(DEV).requires_grad_()]
        y = doc_conv(*leaves, doc)
        y.backward(dy.to(DEV, dtype))
        outs.append([y.float()] + [t.grad.float() for t in leaves])
    assert outs[0][0].dtype == torch.float32
    for a, ref in zip(*outs):
        assert rel(a, ref) < 1e-2
