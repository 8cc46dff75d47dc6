"""The chunked SSD scan and the conv against their step-by-step definitions."""

import pytest
import torch
import torch.nn.functional as F

from h1r.model import ssd


def _inputs(b, T, H, P, G, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, T, H, generator=g, dtype=torch.float64))
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 2 - 0.1
    B = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    S0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    return x, dt, A, B, C, S0


@pytest.mark.parametrize("T,Q", [(1, 8), (7, 8), (8, 8), (9, 8), (37, 8), (64, 16), (65, 16), (100, 32)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_sequential(T, Q, with_state):
    x, dt, A, B, C, S0 = _inputs(2, T, 4, 3, 2, 5, seed=T)
    S0 = S0 if with_state else None
    y1, s1 = ssd.ssd_chunked(x, dt, A, B, C, Q, S0)
    y2, s2 = ssd.ssd_sequential(x, dt, A, B, C, S0)
    torch.testing.assert_close(y1, y2.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s2.float(), rtol=1e-4, atol=1e-4)


def test_resets_at_chunk_boundaries_and_inside():
    x, dt, A, B, C, S0 = _inputs(2, 41, 4, 3, 1, 5, seed=5)
    reset = torch.zeros(2, 41, dtype=torch.bool)
    reset[0, [0, 8, 9, 17, 40]] = True  # on a boundary, right after, mid-chunk, last token
    reset[1, [3, 24]] = True
    y1, s1 = ssd.ssd_chunked(x, dt, A, B, C, 8, S0, reset)
    y2, s2 = ssd.ssd_sequential(x, dt, A, B, C, S0, reset)
    torch.testing.assert_close(y1, y2.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s2.float(), rtol=1e-4, atol=1e-4)


def test_prefill_then_steps_equals_full():
    x, dt, A, B, C, S0 = _inputs(1, 30, 2, 4, 1, 3, seed=9)
    y_full, s_full = ssd.ssd_chunked(x, dt, A, B, C, 8)
    y1, s = ssd.ssd_chunked(x[:, :19], dt[:, :19], A, B[:, :19], C[:, :19], 8)
    ys = [y1]
    for t in range(19, 30):
        y, s = ssd.ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], s)
        ys.append(y[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_full, rtol=1e-4, atol=1e-4)


def test_conv_matches_torch_conv1d_and_steps():
    g = torch.Generator().manual_seed(0)
    b, T, C, K = 2, 13, 6, 4
    x = torch.randn(b, T, C, generator=g)
    w = torch.randn(C, K, generator=g)
    bias = torch.randn(C, generator=g)
    y, final = ssd.causal_conv1d(x, w, bias)
    ref = F.silu(F.conv1d(x.transpose(1, 2), w[:, None], bias, padding=K - 1, groups=C)[..., :T]).transpose(1, 2)
    torch.testing.assert_close(y, ref)
    # split: first 9 tokens, then 4 single steps, must equal the whole
    y1, st = ssd.causal_conv1d(x[:, :9], w, bias)
    outs = [y1]
    for t in range(9, T):
        yt, st = ssd.conv_step(x[:, t], st, w, bias)
        outs.append(yt[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), ref)
    torch.testing.assert_close(st, final)


def test_conv_reset_zeroes_history():
    x = torch.randn(1, 10, 3)
    w, bias = torch.randn(3, 4), torch.randn(3)
    reset = torch.zeros(1, 10, dtype=torch.bool)
    reset[0, 0] = reset[0, 6] = True
    y, _ = ssd.causal_conv1d(x, w, bias, reset=reset)
    y2, _ = ssd.causal_conv1d(x[:, 6:], w, bias)
    torch.testing.assert_close(y[:, 6:], y2)
