"""Run the kernels through Triton's interpreter where there is no GPU.

``TRITON_INTERPRET`` is read when the kernels are first created (on the first launch, never at
import), so setting it here, before any test runs, is early enough.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
