"""The slot cache, on every device: the buffers (``slot_cache``), which sequence lives in which
slot (``slots``), their number sized from memory (``memory``), and the attention over them that
packs a step's prompt chunks into one row (``packed``)."""
