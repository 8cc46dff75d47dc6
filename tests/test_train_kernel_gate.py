"""When the training kernels (and the fast prefill) run, and what they need for that.

Our conv and SSD kernels need only Triton; fla-core only where a switch picks one of its kernels. A GPU without
fla-core used to train through the reference path without a word (and ran out of memory at 16k tokens).
"""

import warnings

import pytest
import torch

from h1r.model import context
from h1r.model import kernels
from h1r.model.kernels import train as K

from tests.test_ssd_packed import make, reference, rel

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


@pytest.fixture
def half_on_cuda(monkeypatch):
    """As if training ran under CUDA autocast with Triton installed."""
    monkeypatch.setattr(context, "_half_active", lambda device: True)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(context, "_warned_no_kernels", False)


def test_our_kernels_need_no_fla(half_on_cuda, monkeypatch):
    monkeypatch.setattr(kernels, "fla_available", lambda: False)
    monkeypatch.setattr(K, "DOC_CONV", True)
    monkeypatch.setattr(K, "SSD_KERNEL", "chunked")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert context.use_train_kernels(CUDA)
    assert not context.use_train_kernels(CUDA, has_state=True)  # decoding with a state: the plain path
    assert not context.use_train_kernels(torch.device("cpu"))


@pytest.mark.parametrize("doc_conv,ssd", [(False, "chunked"), (True, "fla-parallel")])
def test_an_fla_switch_without_fla_warns_once_and_takes_the_reference(half_on_cuda, monkeypatch, doc_conv, ssd):
    monkeypatch.setattr(kernels, "fla_available", lambda: False)
    monkeypatch.setattr(K, "DOC_CONV", doc_conv)
    monkeypatch.setattr(K, "SSD_KERNEL", ssd)
    with pytest.warns(UserWarning, match="fla-core for H1R_DOC_CONV=0 or H1R_TRAIN_SSD=fla-parallel"):
        assert not context.use_train_kernels(CUDA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert not context.use_train_kernels(CUDA)
    monkeypatch.setattr(kernels, "fla_available", lambda: True)
    assert context.use_train_kernels(CUDA)


def test_no_triton_takes_the_reference(half_on_cuda, monkeypatch):
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.setattr(kernels, "fla_available", lambda: True)
    with pytest.warns(UserWarning, match="need triton"):
        assert not context.use_train_kernels(CUDA)


def test_full_precision_takes_the_reference(monkeypatch):
    monkeypatch.setattr(context, "_half_active", lambda device: False)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert not context.use_train_kernels(CUDA)


def test_forward_only_ssd_without_fla_runs_the_packed_ssd(monkeypatch):
    """GRPO's logprob recomputation (no gradients) took fla's chunked forward unconditionally."""
    monkeypatch.setattr(kernels, "fla_available", lambda: False)
    monkeypatch.setattr(K, "SSD_KERNEL", "chunked")
    monkeypatch.setattr(K, "_ssd_fla", None)  # taking it would fail
    x, dt, A, B, C, cu = make([9, 1, 14], 4, 3, 5, 2, torch.float64, seed=3)
    with torch.no_grad():
        y = K.ssd_varlen(x, dt, A, B, C, cu, chunk_size=8)
    assert rel(y, reference(x, dt, A, B, C, cu)) < 1e-10


def test_the_fast_model_warns_when_fla_core_is_missing(monkeypatch):
    """The engine's prefill falls back to the reference scan without fla-core: it says so."""
    from h1r.model import fast

    monkeypatch.setattr(kernels, "fla_available", lambda: False)
    with pytest.warns(UserWarning, match="fla-core is not installed: prefill runs the reference SSD scan"):
        assert fast.warn_without_fla(CUDA, use_kernels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fast.warn_without_fla(CUDA, use_kernels=False)  # the reference path was asked for
        assert not fast.warn_without_fla(torch.device("cpu"), use_kernels=True)  # the interpreter
        monkeypatch.setattr(kernels, "fla_available", lambda: True)
        assert not fast.warn_without_fla(CUDA, use_kernels=True)
