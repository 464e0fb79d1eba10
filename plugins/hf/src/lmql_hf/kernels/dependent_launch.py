"""Programmatic dependent launch (Hopper and later) for the kernels of a decode step.

A decode step of one row is a chain of ~150-250 small kernels, and between two of them the GPU
idles for a few microseconds: the next kernel is launched only once the last one has finished
and its writes are flushed. Launched as a dependent (``launch_pdl``), a kernel starts while the
one before it still runs and waits inside (``griddepcontrol.wait``) for that one's results before
it reads anything an earlier kernel wrote; what does not depend on them (the one-row product's
weights) it loads before waiting. Each kernel lets its own dependent start once its wait is
over (``griddepcontrol.launch_dependents``), so at most two kernels overlap. Every kernel waits
before it ends, so a kernel that waits for the one before it also waits for all before that.
Kernels not launched so (cuBLAS's, PyTorch's) order as usual. Off where the device is older
than Hopper, in Triton's interpreter, and with ``LMQL_PDL=0`` (for measuring).
Imported only where Triton is (CUDA builds of torch; its interpreter in tests).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Call before the first load of anything an earlier kernel wrote (a no-op without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def launch_options(device: torch.device) -> dict[str, bool]:
    """The arguments that launch a kernel on ``device`` as a dependent, where it can be."""
    if _dependent_launches(device.type, device.index):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@functools.cache
def _dependent_launches(kind: str, index: int | None) -> bool:
    if kind != "cuda" or os.environ.get("LMQL_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9
