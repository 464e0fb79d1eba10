"""The CUDA path: decode steps and packed prompt passes replayed from CUDA graphs (``graphs``,
``prompt_graphs``; ``replays`` decides which and captures them before Ready), and modules swapped
for fused kernels (``fused``, ``one_row_layers``). The Triton kernels themselves are in ``kernels``."""
