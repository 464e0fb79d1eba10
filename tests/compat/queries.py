"""LMQL programs of the differential suite: each runs under LMQL 0.7.3's runtime and under ours.

Written for this suite from the topics of LMQL's documentation (decoders, constraints,
distributions, prompt-time Python, the Python API). Every entry is a dict:

- ``name``: the row's name;
- ``kind``: ``"greedy"`` (argmax: prompt and variables must be identical), ``"beam"`` (also
  identical) or ``"sampled"`` (only the shape is checked, see ``shape``);
- ``lmql``: query source for ``lmql.run(source, model=..., **inputs)``; ``<MODEL>`` in it is
  replaced by an ``lmql.model(...)`` expression for the server (then no ``model=`` is passed),
  or ``python``: Python source defining ``main()`` (sync or async) that returns the result; it
  runs as a module whose globals already hold ``lmql`` and ``MODEL`` (see ``query_programs.py``);
- ``inputs``: keyword arguments for ``lmql.run``;
- ``shape`` (sampled only): ``{"n": results, "vars": {VAR: {"type": "str"|"int", "max_tokens":
  bound, "in": [allowed values]}}}``.

lmql-tiny rambles, so every free variable is bounded (``len(TOKENS(X)) < n``, or a list). LMQL
0.7.3 quirks met while writing them are noted where they shaped a program.
"""

from __future__ import annotations

from typing import Any

import queries_api
import queries_chat
import queries_nested
import queries_syntax

# -- standalone one-liners: argmax "..." from <model> where ... ------------------------------------

ONE_LINERS: list[dict[str, Any]] = [
    # the docs' own example, verbatim but for the model: lmql-tiny ends it with EOS
    {"name": "docs_hello", "kind": "greedy", "lmql": 'argmax "Hello[WHO]" from <MODEL>'},
    {"name": "oneliner_len_tokens", "kind": "greedy",
     "lmql": 'argmax "Hello[WHO]" from <MODEL> where len(TOKENS(WHO)) < 5'},
    {"name": "oneliner_stops_at", "kind": "greedy",
     "lmql": 'argmax "Q: What is the capital of France?\\nA:[A]" from <MODEL> '
             'where STOPS_AT(A, ".") and len(TOKENS(A)) < 12'},
    {"name": "oneliner_in_list", "kind": "greedy",
     "lmql": 'argmax "The cat sat on the[PLACE]" from <MODEL> where PLACE in [" mat", " dog", " table"]'},
    {"name": "oneliner_int", "kind": "greedy",
     "lmql": 'argmax "Two plus two is [N]" from <MODEL> where INT(N) and len(TOKENS(N)) < 3'},
    {"name": "oneliner_sample", "kind": "sampled",
     "lmql": 'sample(n=2, temperature=0.8) "Hello[WHO]" from <MODEL> where len(TOKENS(WHO)) < 4',
     "shape": {"n": 2, "vars": {"WHO": {"type": "str", "max_tokens": 4}}}},
    {"name": "oneliner_beam", "kind": "beam",
     "lmql": 'beam(n=2) "The cat sat on the[P]" from <MODEL> where P in [" mat", " dog", " table"]'},
    {"name": "oneliner_model_string", "kind": "greedy",  # no from: the model= argument decides
     "lmql": 'argmax "The weather today is[W]" where len(TOKENS(W)) < 6'},
]

# -- multi-line queries: decoder clause, body, from, where ----------------------------------------

MULTI_LINE: list[dict[str, Any]] = [
    {"name": "multiline_from_where", "kind": "greedy", "lmql": '''argmax
    "Q: Name a fruit.\\n"
    "A:[FRUIT]"
from
    <MODEL>
where
    STOPS_AT(FRUIT, "\\n") and len(TOKENS(FRUIT)) < 6'''},
    # LMQL 0.7.3: a where clause continued over lines inside a query string does not parse; one line
    {"name": "multiline_two_vars", "kind": "greedy", "lmql": '''argmax
    "Q: What is the capital of Italy?\\nA:[CITY]\\n"
    "Q: And its country?\\nA:[COUNTRY]"
where
    STOPS_AT(CITY, "\\n") and len(TOKENS(CITY)) < 6 and len(TOKENS(COUNTRY)) < 5'''},
    {"name": "statement_where", "kind": "greedy", "lmql": '''argmax
    "A short poem:\\n[LINE1]" where STOPS_AT(LINE1, "\\n") and len(TOKENS(LINE1)) < 8
    "\\n[LINE2]" where len(TOKENS(LINE2)) < 6'''},
    # Not compared: a variable right after a variable with no text between ("[A][B]"). LMQL 0.7.3
    # gives B = "": the EOS that ended A under an EOS-only mask is cached as the unmasked argmax of
    # that prefix (runtime/dclib/dclib_cache.py:549-553), and B starts at the same prefix; we
    # generate B (a documented difference, README "LMQL programs").
    {"name": "statement_and_query_where", "kind": "greedy", "lmql": '''argmax
    "Colors: red,[C1]" where STOPS_AT(C1, ",")
    " and[C2]"
where
    len(TOKENS(C1)) < 4 and len(TOKENS(C2)) < 4'''},
    {"name": "several_prompt_statements", "kind": "greedy", "lmql": '''argmax
    "Dear friend,\\n"
    "I write to tell you[NEWS]" where len(TOKENS(NEWS)) < 6
    "\\nYours,\\n"
    "[NAME]" where len(TOKENS(NAME)) < 3'''},
]

# -- decoders --------------------------------------------------------------------------------------

DECODERS: list[dict[str, Any]] = [
    {"name": "sample_tokens", "kind": "sampled", "lmql": '''sample(n=2, temperature=0.8)
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 8''',
     "shape": {"n": 2, "vars": {"STORY": {"type": "str", "max_tokens": 8}}}},
    {"name": "sample_in_list", "kind": "sampled", "lmql": '''sample(n=2, temperature=0.8)
    "My favourite animal is the[ANIMAL]" where ANIMAL in [" cat", " dog", " horse"]''',
     "shape": {"n": 2, "vars": {"ANIMAL": {"type": "str", "in": [" cat", " dog", " horse"]}}}},
    {"name": "sample_two_vars", "kind": "sampled", "lmql": '''sample(n=2, temperature=0.8)
    "Name:[NAME]\\nAge:[AGE]" where STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 5 and INT(AGE) and len(TOKENS(AGE)) < 3''',
     "shape": {"n": 2, "vars": {"NAME": {"type": "str", "max_tokens": 5},
                                "AGE": {"type": "int", "max_tokens": 3}}}},
    {"name": "beam_tokens", "kind": "beam", "lmql": '''beam(n=2)
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 5'''},
    {"name": "beam_stops_at", "kind": "beam", "lmql": '''beam(n=2)
    "Q: What is two plus two?\\nA:[A]" where STOPS_AT(A, ".") and len(TOKENS(A)) < 6'''},
]

# -- constraints -----------------------------------------------------------------------------------

CONSTRAINTS: list[dict[str, Any]] = [
    {"name": "stops_at", "kind": "greedy",
     "lmql": 'argmax "The quick brown fox[X]" where STOPS_AT(X, "dog") and len(TOKENS(X)) < 15'},
    {"name": "stops_before", "kind": "greedy",
     "lmql": 'argmax "The quick brown fox[X]" where STOPS_BEFORE(X, "dog") and len(TOKENS(X)) < 15'},
    {"name": "stops_at_newline", "kind": "greedy",
     "lmql": 'argmax "List:\\n- apples\\n-[ITEM]" where STOPS_AT(ITEM, "\\n") and len(TOKENS(ITEM)) < 8'},
    {"name": "len_tokens", "kind": "greedy", "lmql": 'argmax "I think that[X]" where len(TOKENS(X)) < 7'},
    {"name": "len_chars", "kind": "greedy", "lmql": 'argmax "I think that[X]" where len(X) < 12'},
    {"name": "in_list", "kind": "greedy",
     "lmql": 'argmax "Is the sky blue? Answer:[YN]" where YN in [" yes", " no", " maybe"]'},
    {"name": "in_list_prefixes", "kind": "greedy",  # values sharing a first token
     "lmql": 'argmax "The best number is[N]" where N in [" one", " one hundred", " two"]'},
    {"name": "int", "kind": "greedy",
     "lmql": 'argmax "Q: How many legs has a cat?\\nA:[N]" where INT(N) and len(TOKENS(N)) < 3'},
    {"name": "regex", "kind": "greedy",
     "lmql": 'argmax "The year was[Y]" where REGEX(Y, r" [0-9]+") and len(TOKENS(Y)) < 4'},
    {"name": "regex_words", "kind": "greedy",
     "lmql": 'argmax "She said[W]" where REGEX(W, r" [a-z]+") and len(TOKENS(W)) < 3'},
    {"name": "regex_alternatives", "kind": "greedy",
     "lmql": 'argmax "Is it raining? Answer:[A]" where REGEX(A, r" (yes|no|maybe)")'},
    {"name": "stops_before_newline", "kind": "greedy",
     "lmql": 'argmax "Q: Name a city.\\nA:[C]" where STOPS_BEFORE(C, "\\n") and len(TOKENS(C)) < 8'},
    {"name": "len_chars_and_stops_at", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where STOPS_AT(X, ",") and len(X) < 20'},
    {"name": "and_or", "kind": "greedy",
     "lmql": 'argmax "A cat, a dog[X]" where (STOPS_AT(X, ".") or STOPS_AT(X, ",")) and len(TOKENS(X)) < 10'},
    {"name": "or_lists", "kind": "greedy",
     "lmql": 'argmax "The cat sat on the[P]" where P in [" dog", " table"] or P in [" mat", " floor"]'},
    {"name": "not_in", "kind": "greedy",
     "lmql": 'argmax "The cat sat on the[P]" where P in [" mat", " dog", " table"] and not P in [" mat"]'},
    {"name": "condition_on_input", "kind": "greedy", "inputs": {"limit": 4},
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < limit'},
    # LMQL 0.7.3 cannot put an earlier variable into a list (B in [A, " green"]: AttributeError
    # 'Var' object has no attribute 'startswith'); a Python list built from it works
    {"name": "condition_list_from_earlier_var", "kind": "greedy", "lmql": '''argmax
    "Pick:[A]" where A in [" red", " blue"]
    options = [A, " green"]
    "\\nAgain:[B]" where B in options'''},
    {"name": "condition_len_of_earlier_var", "kind": "greedy", "lmql": '''argmax
    "Pick:[A]" where A in [" red", " blue"]
    "\\nAgain:[B]" where len(TOKENS(B)) < len(A)'''},
    {"name": "condition_on_earlier_value", "kind": "greedy", "lmql": '''argmax
    "Pick:[A]\\nAgain:[B]" where A in [" red", " blue"] and (A == " red" or len(TOKENS(B)) < 2) and len(TOKENS(B)) < 4'''},
    {"name": "condition_earlier_var_in_query_where", "kind": "greedy", "lmql": '''argmax
    "Pick:[A]\\nAgain:[B]" where A in [" red", " blue"] and len(TOKENS(B)) < len(A)'''},
]

# -- distributions ---------------------------------------------------------------------------------

# LMQL 0.7.3 skips the distribution of a query with no other variable: each has one more
DISTRIBUTIONS: list[dict[str, Any]] = [
    {"name": "distribution", "kind": "greedy", "lmql": '''argmax
    "Q: Where did the cat sit?\\nA:[ANSWER]\\nSo the cat sat on the[PLACE]" where len(TOKENS(ANSWER)) < 4
distribution
    PLACE in [" mat", " dog", " table"]'''},
    {"name": "distribution_input", "kind": "greedy", "inputs": {"animal": "dog"},
     "lmql": '''argmax
    "The {animal} is[MOOD]" where len(TOKENS(MOOD)) < 3
    " so it is[FEEL]"
distribution
    FEEL in [" happy", " sad"]'''},
    {"name": "distribution_list_var", "kind": "greedy",
     "inputs": {"options": [" yes", " no"]}, "lmql": '''argmax
    "Q: Is water wet?\\nThink:[T]\\nA:[ANS]" where len(TOKENS(T)) < 3
distribution
    ANS in options'''},
]

# -- prompt-time Python ----------------------------------------------------------------------------

PYTHON_IN_PROMPTS: list[dict[str, Any]] = [
    {"name": "interpolate_input", "kind": "greedy", "inputs": {"name": "Alice"},
     "lmql": 'argmax "Hello {name}, my name is[X]" where len(TOKENS(X)) < 4'},
    {"name": "interpolate_expression", "kind": "greedy", "inputs": {"a": 2, "b": 3},
     "lmql": 'argmax "{a} plus {b} is {a + b}, and {a} times {b} is[X]" where len(TOKENS(X)) < 3'},
    {"name": "interpolate_earlier_var", "kind": "greedy", "lmql": '''argmax
    "Name an animal:[A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 4
    "\\nThe{A} says[S]" where len(TOKENS(S)) < 4'''},
    {"name": "for_loop_vars", "kind": "greedy", "lmql": '''argmax
    for i in range(3):
        "{i + 1}.[ITEM]" where len(TOKENS(ITEM)) < 3
        "\\n"'''},
    {"name": "for_loop_list_return", "kind": "greedy", "inputs": {"things": ["cat", "dog"]}, "lmql": '''argmax
    sounds = []
    for t in things:
        "A {t} says[S]" where STOPS_AT(S, ".") and len(TOKENS(S)) < 4
        "\\n"
        sounds.append(S.strip())
    return sounds'''},
    {"name": "if_on_var", "kind": "greedy", "lmql": '''argmax
    "Is the sun hot? Answer:[YN]" where YN in [" yes", " no"]
    if YN == " yes":
        " Good. Why?[WHY]" where len(TOKENS(WHY)) < 4
    else:
        " Really? Why not?[WHY]" where len(TOKENS(WHY)) < 4'''},
    {"name": "if_else_branch", "kind": "greedy", "lmql": '''argmax
    "The cat sat on the[P]" where P in [" mat", " dog"]
    if P == " dog":
        " Strange.[R]" where len(TOKENS(R)) < 3
    else:
        " Of course.[R]" where len(TOKENS(R)) < 3'''},
    {"name": "while_loop", "kind": "greedy", "lmql": '''argmax
    n = 0
    while n < 2:
        "Step {n}:[S]" where len(TOKENS(S)) < 3
        "\\n"
        n += 1
    return n'''},
    {"name": "if_on_input", "kind": "greedy", "inputs": {"formal": False}, "lmql": '''argmax
    if formal:
        "Good evening, sir.[X]" where len(TOKENS(X)) < 4
    elif not formal:
        "Hey there![X]" where len(TOKENS(X)) < 4'''},
    {"name": "return_value", "kind": "greedy", "lmql": '''argmax
    "Q: What is two plus two?\\nA:[N]" where INT(N) and len(TOKENS(N)) < 3
    return N'''},
    {"name": "return_dict", "kind": "greedy", "lmql": '''argmax
    "Title:[T]" where STOPS_AT(T, "\\n") and len(TOKENS(T)) < 5
    "Author:[A]" where len(TOKENS(A)) < 3
    return {"title": T.strip(), "author": A.strip()}'''},
    {"name": "python_statements", "kind": "greedy", "inputs": {"words": ["sun", "moon"]}, "lmql": '''argmax
    joined = " and ".join(words)
    count = len(words)
    "The {joined} are {count} things that[X]" where len(TOKENS(X)) < 4'''},
]

# -- the Python API: @lmql.query, lmql.F, run_sync -------------------------------------------------

PYTHON_API: list[dict[str, Any]] = [
    {"name": "decorator_async", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def greet(name):
    \'\'\'lmql
    "Hello {name}, I am[X]" where len(TOKENS(X)) < 4
    \'\'\'

async def main():
    return await greet("Bob")
'''},
    {"name": "decorator_sync", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
def capital(country):
    \'\'\'lmql
    argmax
        "The capital of {country} is[C]" where STOPS_AT(C, ".") and len(TOKENS(C)) < 5
    \'\'\'

def main():
    return capital("Spain")
'''},
    {"name": "decorator_return", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def count(thing):
    \'\'\'lmql
    "How many {thing} are there? [N]" where INT(N) and len(TOKENS(N)) < 3
    return N
    \'\'\'

async def main():
    return await count("cats")
'''},
    {"name": "decorator_loop", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def lists(items):
    \'\'\'lmql
    out = []
    for it in items:
        "{it}:[V]" where len(TOKENS(V)) < 3
        out.append(V)
    return out
    \'\'\'

async def main():
    return await lists(["one", "two"])
'''},
    {"name": "decorator_distribution", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def classify(text):
    \'\'\'lmql
    argmax
        "Text: {text}\\nThink:[T]\\nSentiment:[S]" where len(TOKENS(T)) < 3
    distribution
        S in [" good", " bad"]
    \'\'\'

async def main():
    return await classify("I love it")
'''},
    {"name": "decorator_sample", "kind": "sampled", "python": '''
@lmql.query(model=MODEL)
async def tell():
    \'\'\'lmql
    sample(n=2, temperature=0.8)
        "Once upon a time[S]" where len(TOKENS(S)) < 6
    \'\'\'

async def main():
    return await tell()
''', "shape": {"n": 2, "vars": {"S": {"type": "str", "max_tokens": 6}}}},
    {"name": "decorator_nested_call", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
def word(prefix):
    \'\'\'lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    return W
    \'\'\'

def main():
    first = word("Once upon")
    return [first, word("The cat" + first)]
'''},
    {"name": "f_function", "kind": "greedy", "python": '''
def main():
    say = lmql.F("Say this is a test:[R]", "len(TOKENS(R)) < 5", model=MODEL)
    return say()
'''},
    {"name": "f_input", "kind": "greedy", "python": '''
def main():
    summary = lmql.F("Summarize {text} in a word:[S]", "STOPS_AT(S, '.') and len(TOKENS(S)) < 4", model=MODEL)
    return summary(text="a cat on a mat")
'''},
    {"name": "f_no_constraint_in_list", "kind": "greedy", "python": '''
def main():
    pick = lmql.F("The cat sat on the[P]", "P in [' mat', ' dog']", model=MODEL)
    return pick()
'''},
    {"name": "run_sync", "kind": "greedy", "python": '''
def main():
    return lmql.run_sync('argmax "Hello[X]" where len(TOKENS(X)) < 4', model=MODEL)
'''},
    {"name": "query_string", "kind": "greedy", "python": '''
async def main():
    q = lmql.query('argmax "Goodbye {who},[X]" where len(TOKENS(X)) < 4')
    return await q(who="Carl", model=MODEL)
'''},
]

PROGRAMS: list[dict[str, Any]] = [*ONE_LINERS, *MULTI_LINE, *DECODERS, *CONSTRAINTS, *DISTRIBUTIONS,
                                  *PYTHON_IN_PROMPTS, *PYTHON_API, *queries_syntax.PROGRAMS,
                                  *queries_api.PROGRAMS, *queries_nested.PROGRAMS, *queries_chat.PROGRAMS]
