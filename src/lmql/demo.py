"""``lmql.demo``: few-shot text used by LMQL's documentation examples (the tools page's calculator).

The demonstrations are our own, in the GSM8K format LMQL's examples expect: a question, "Let's
think step by step.", reasoning with each calculation written ``<< EXPR = VALUE >>VALUE``, and a
closing "So the answer is N".
"""

_SAMPLES = """
Q: A baker makes 24 rolls in the morning and 18 in the afternoon. She sells 30. How many rolls are left?
A: Let's think step by step.
The baker makes 24+18=<< 24+18 = 42 >>42 rolls in all.
After selling 30 rolls, 42-30=<< 42-30 = 12 >>12 rolls are left.
So the answer is 12

Q: A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. How far does it travel?
A: Let's think step by step.
In the first part it travels 60*3=<< 60*3 = 180 >>180 miles.
In the second part it travels 40*2=<< 40*2 = 80 >>80 miles.
In all it travels 180+80=<< 180+80 = 260 >>260 miles.
So the answer is 260
"""


def gsm8k_samples() -> str:
    """Worked arithmetic questions that show a model the ``<< expr = value >>`` calculator form."""
    return _SAMPLES
