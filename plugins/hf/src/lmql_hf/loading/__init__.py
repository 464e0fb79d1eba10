"""Finding and loading a model: on disk or the hub (``hub``), its ``from_pretrained`` call and
weights (``weights``, ``loader_keys``), its tokenizer and chat template (``tokenizer``, ``chat``).
``hub`` and ``tokenizer`` import no torch: the client-side tokenizer comes from here too."""
