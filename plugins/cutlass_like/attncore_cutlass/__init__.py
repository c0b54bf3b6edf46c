"""attncore-cutlass: CUDA C++ memory-efficient attention built for a ``TORCH_CUDA_ARCH_LIST``.

Importing this package imports nothing heavy; the compiled library is loaded (or built, on first use)
when an operator first runs. ``python -m attncore_cutlass build`` builds it ahead of time.
"""

__all__: list[str] = []
