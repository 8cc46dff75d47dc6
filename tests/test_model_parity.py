"""H1R's Falcon-H1 against transformers' FalconH1ForCausalLM on the same random checkpoint (fp32).

transformers' multi-token forward on top of a cache is not trusted for the Mamba branch, so every
comparison is against its one-shot forward over the whole sequence.
"""

import zlib

import pytest
import torch

from h1r.checkpoint import load_model
from tests.helpers import PARITY_CONFIGS, hf_model, save_hf

T = 211  # >= 200 and not a multiple of any chunk size used


@pytest.fixture(scope="module", params=list(PARITY_CONFIGS))
def pair(request, tmp_path_factory):
    hf = hf_model(seed=zlib.crc32(request.param.encode()) % 1000,  # str hash() is salted per process
                   **PARITY_CONFIGS[request.param])
    path = save_hf(hf, tmp_path_factory.mktemp(request.param))
    ours = load_model(path, dtype="float32")
    ids = torch.randint(0, hf.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    return hf, ours, ids, ref


def close(a, ref, tol=1e-4):
    err = (a - ref).abs().max().item() / ref.abs().max().item()
    assert err < tol, f"relative error {err:.2e}"


def test_one_shot(pair):
    _, ours, ids, ref = pair
    with torch.no_grad():
        close(ours(ids), ref)


@pytest.mark.parametrize("piece", [1, 7, 64])
def test_prefill_in_pieces(pair, piece):
    _, ours, ids, ref = pair
    n = T if piece > 1 else 40  # single-token pieces: first 40 positions (each is a full forward)
    with torch.no_grad():
        state = ours.new_state(2)
        out = torch.cat([ours(ids[:, s:min(s + piece, n)], state=state) for s in range(0, n, piece)], dim=1)
    close(out, ref[:, :n])


def test_decode_20_steps(pair):
    _, ours, ids, ref = pair
    with torch.no_grad():
        state = ours.new_state(2)
        outs = [ours(ids[:, : T - 20], state=state)]
        for t in range(T - 20, T):
            outs.append(ours(ids[:, t:t + 1], state=state))
    close(torch.cat(outs, dim=1), ref)


def test_decode_greedy_tokens_match_transformers(pair):
    """Greedy decode through our recurrent state against transformers' greedy, where each of its steps is a
    one-shot forward over the whole sequence (its trusted path). A step may differ only at a true tie."""
    hf, ours, ids, _ = pair
    seq = ids[:1, :37]
    with torch.no_grad():
        state = ours.new_state(1)
        logits = ours(seq, state=state)[:, -1]
        for step in range(12):
            ref = hf(seq).logits[0, -1]
            mine, theirs = int(logits.argmax(-1)), int(ref.argmax())
            gap = (ref[theirs] - ref[mine]).item() / ref.abs().max().item()
            assert mine == theirs or gap < 1e-5, f"step {step}: token {mine} vs transformers {theirs} (gap {gap:.2e})"
            seq = torch.cat([seq, torch.tensor([[theirs]])], dim=1)
            logits = ours(torch.tensor([[mine]]), state=state)[:, -1]
            if mine != theirs:  # a tie: the two continuations legitimately part ways
                break
