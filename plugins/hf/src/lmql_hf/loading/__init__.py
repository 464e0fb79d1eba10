"""Finding and loading a model: on disk or the hub (``hub``), its ``from_pretrained`` call and
weights (``weights``, ``loader_keys``), its tokenizer and chat template (``tokenizer``, ``chat``).
Free of torch at import: the client-side tokenizer comes from here too."""
