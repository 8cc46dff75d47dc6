"""Programmatic dependent launch (Hopper+), from inside the kernels: `pdl_enter(PDL)` comes before a
decode-path kernel touches anything an earlier kernel writes or reads.

PDL (the constexpr that `kernels.pdl()` passes): 0 launched normally; 1 launched early, so wait here for
the previous kernel to finish and its writes to land; 2 the same, and then let the next kernel launch at
once, so its programs are resident and waiting while this one runs. Either way no kernel goes past
`gdc_wait` before its predecessor is complete, and so, by induction, every earlier kernel in the stream.
(Fetching a GEMV's first weight tile before the wait was tried: one-row graph replay went from 4.40 to
4.79 ms on the H200, so the kernels wait first.)
"""

import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:  # Triton < 3.4 has no grid dependency control: kernels.pdl() then launches normally
    HAS_PDL = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    if PDL >= 1:
        gdc_wait()
    if PDL == 2:
        gdc_launch_dependents()
