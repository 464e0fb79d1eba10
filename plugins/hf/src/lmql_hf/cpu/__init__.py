"""The CPU's lean path: decode rows of Llama (Qwen2, Qwen3) and GPT-2 as direct torch operations
(``lean_decode``), the output head's product in the form timed fastest (``head_product``), linear
layers packed for oneDNN (``packed_linear``), and the host's matrix threads (``threads``)."""
