"""Differential-suite programs (see queries.py for the format): LMQL programs written for issue 27,
area: nested. Every program here must give identical results under LMQL 0.7.3 and lmql-core.

Nested queries (``[VAR: query]``), queries called from a query's body, queries defined inside a
query, query methods, and ``context`` in a query body. LMQL 0.7.3 quirks that shaped them:
a query called from another's body must be ``async`` there (a sync one raises "cannot be called
synchronously from within an async context") and has no model unless it names one (the outer's is
not inherited); ``context`` is not rewritten inside ``{...}`` of a prompt string (NameError); a
query that reaches no variable returns a one-element list.
"""

from __future__ import annotations

from typing import Any

# the inner queries several programs share (each program is its own module)
COT = '''
@lmql.query
def chain_of_thought():
    \'\'\'lmql
    "A: Let's think step by step. [ANSWER]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    \'\'\'
'''
ONE_OF = '''
@lmql.query
def one_of(choices: list):
    \'\'\'lmql
    "Among {choices}, what do you consider \\
    most likely? [ANSWER]" where ANSWER in choices
    return ANSWER
    \'\'\'
'''
THINK = '''
@lmql.query
def think():
    \'\'\'lmql
    "A: Let's think step by step. [ANSWER]"
    return ANSWER.strip()
    \'\'\'

@lmql.query
def think_aloud():
    \'\'\'lmql
    "A: Let's think. [ANSWER]"
    \'\'\'
'''

MUSING = '''
@lmql.query
def musing():
    \'\'\'lmql
    "Think: [ANSWER]" where len(TOKENS(ANSWER)) < 8
    return ANSWER.strip()
    \'\'\'

@lmql.query
def musing_text():
    \'\'\'lmql
    "Think: [ANSWER]" where len(TOKENS(ANSWER)) < 8
    \'\'\'

@lmql.query
def two():
    \'\'\'lmql
    "First: [A]" where len(TOKENS(A)) < 3
    " Second: [B]" where len(TOKENS(B)) < 3
    return A + "|" + B
    \'\'\'
'''


def outer(name: str, body: str, shared: str = "", decorator: str = "@lmql.query(model=MODEL)") -> dict[str, Any]:
    """A program whose main() runs query ``name`` (``body`` its LMQL) after the ``shared`` inner ones."""
    source = f"{shared}\n{decorator}\ndef {name}():\n    '''lmql\n{body}\n    '''\n\ndef main():\n    return {name}()\n"
    return {"name": name, "kind": "greedy", "python": source}


PROGRAMS: list[dict[str, Any]] = [
    # the docs' chain of thought: the inner prompt continues the outer one and is gone after it
    outer("nested_cot", '''    "Q: It is August 12th, 2020. What date was it 100 days ago? [ANSWER: chain_of_thought]"
    "\\nSo:[X]" where len(TOKENS(X)) < 3''', COT),
    # no return value: the inner run's text is the value (a macro expansion)
    outer("nested_no_return", '''    "A list of things:\\n[ITEMS: items_list(2)]"
    "Done[X]" where len(TOKENS(X)) < 3''', '''
@lmql.query
def items_list(n: int):
    \'\'\'lmql
    for i in range(n):
        "-[ITEM]\\n" where STOPS_AT(ITEM, "\\n") and len(TOKENS(ITEM)) < 3
    \'\'\'
'''),
    outer("nested_args", '''    "Q: What is the capital of France? \\
    [ANSWER: one_of(['Berlin', 'Paris', 'London'])]"
    "\\nSo[X]" where len(TOKENS(X)) < 3''', ONE_OF),
    outer("nested_two_in_a_string", '''    "Q: [A: one_of(['x', 'y'])] and [B: one_of(['Berlin', 'Paris'])]"''', ONE_OF),
    # a nested query with a nested query inside, whose variable has a constraint of its own
    outer("nested_in_nested", '''    "The answer is [ANSWER: cot_one_of(['Hello', 'Greetings'])]"''', ONE_OF + '''
@lmql.query
def cot_one_of(choices: list):
    \'\'\'lmql
    "A: Let's think step by step. [ANSWER: one_of(choices)]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    \'\'\'
'''),
    outer("nested_three_times", '''    "Q: When was Obama born? [ANSWER: dateformat]\\n"
    first = ANSWER
    "Q: When was Bruno Mars born? [ANSWER: dateformat]\\n"
    "Out of these, who was born last?[LAST]" where len(TOKENS(LAST)) < 3
    return [first, ANSWER, LAST, context.prompt]''', '''
@lmql.query
def dateformat():
    \'\'\'lmql
    "(respond in DD/MM/YYYY) [ANSWER]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    \'\'\'
'''),
    # constraints on the outer variable hold over the inner run's text (LMQL's sub-interpreter)
    outer("nested_outer_len", '''    "Q: What is two plus two? [ANSWER: think]" where len(TOKENS(ANSWER)) < 14''', THINK),
    outer("nested_outer_stops_at", '''    "Q: What is two plus two? [ANSWER: think]" where STOPS_AT(ANSWER, ".")''', THINK),
    outer("nested_outer_len_in_prompt", '''    "Q: What is two plus two? [ANSWER: think_aloud]" where len(TOKENS(ANSWER)) < 3''',
          THINK),
    # a string as the type is a regular expression (LMQL's type_expr)
    {"name": "regex_type", "kind": "greedy", "lmql": '''argmax
    pattern = "[0-9][0-9]"
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 [N: pattern] and[X]" where len(TOKENS(X)) < 3'''},
    # VAR's own stopping phrase in the inner run's last token: VAR is that text, cut
    outer("nested_outer_stops_in_value", '''    "Q: Tell me a story. [ANSWER: musing]" where STOPS_AT(ANSWER, "e")''',
          MUSING),
    outer("nested_outer_stops_no_return", '''    "Q: Tell me a story. [ANSWER: musing_text]" where STOPS_AT(ANSWER, "e")''',
          MUSING),
    outer("nested_outer_len_two_inner_vars", '''    "Q: Tell me a story. [ANSWER: two]" where len(TOKENS(ANSWER)) < 6''',
          MUSING),
    outer("nested_two_inner_vars", '''    "Q: Tell me a story. [ANSWER: two]"
    "\\nAnd[X]" where len(TOKENS(X)) < 3''', MUSING),
    {"name": "nested_sampled", "kind": "sampled", "python": '''
@lmql.query
def short():
    \'\'\'lmql
    "A:[Y]" where len(TOKENS(Y)) < 3
    return Y
    \'\'\'

@lmql.query(model=MODEL)
def sampled():
    \'\'\'lmql
    sample(n=2, temperature=0.8)
        "Q:[A: short] and[X]" where len(TOKENS(X)) < 3
    \'\'\'

def main():
    return sampled()
''', "shape": {"n": 2, "vars": {"A": {"type": "str", "max_tokens": 3}, "X": {"type": "str", "max_tokens": 3}}}},
    {"name": "nested_method", "kind": "greedy", "python": '''
class Asker:
    def __init__(self):
        self.a = 7

    @lmql.query
    def number(self):
        \'\'\'lmql
        "Number {self.a}:[N]" where len(TOKENS(N)) < 3
        return N.strip()
        \'\'\'

    @lmql.query(model=MODEL)
    async def explain(self):
        \'\'\'lmql
        "Why {self.a}? [N]" where len(TOKENS(N)) < 3
        \'\'\'

    @lmql.query(model=MODEL)
    def ask(self):
        \'\'\'lmql
        "Q:[A: self.number]"
        r = await self.explain()
        return [A, r.prompt, r.variables["N"], context.prompt]
        \'\'\'

def main():
    return Asker().ask()
'''},
    {"name": "query_inside_query", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
def outer_query():
    \'\'\'lmql
    @lmql.query
    async def inner(x):
        """lmql
        "Inner {x}:[Y]" where len(TOKENS(Y)) < 3
        return Y.upper()
        """
    "Outer:[Z: inner('q')]\\n"
    r = inner("z", model=MODEL)
    return [Z, r, context.prompt]
    \'\'\'

def main():
    return outer_query()
'''},
    {"name": "call_from_body", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def word(prefix):
    \'\'\'lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    return W
    \'\'\'

@lmql.query(model=MODEL)
async def phrase(prefix):
    \'\'\'lmql
    "{prefix}[W]" where len(TOKENS(W)) < 3
    \'\'\'

@lmql.query(model=MODEL)
def caller():
    \'\'\'lmql
    a = word("Once upon")
    b = await phrase("The cat")
    c = phrase("The dog")
    "Start: {a}[X]" where len(TOKENS(X)) < 3
    return [a, b.prompt, b.variables, c.variables["W"], X, context.prompt]
    \'\'\'

def main():
    return caller()
'''},
    {"name": "context_in_body", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
def with_context():
    \'\'\'lmql
    before = context.prompt
    "Hello[X]" where len(TOKENS(X)) < 3
    v = context.get_var("X")
    every = context.get_all_vars()
    w = await context.get_var("X")
    s = context.score([" a", " b"])
    "! Then[Y]" where len(TOKENS(Y)) < 3
    missing = context.get_var("Z")
    return [before, v, every, w, type(context).__name__, s.argmax(), [round(x, 3) for x in s.scores()],
            context.prompt, missing, context.get_return_value().prompt]
    \'\'\'

def main():
    return with_context()
'''},
    # LMQLContext.num_calls (LMQL 0.7.3 counts its cache's uncached calls, 0 2 5 here, ours its
    # requests: the same order, not the same numbers) and setters that change nothing mid-run,
    # but set_model: LMQL makes a new decoder model there, never called, so num_calls stays 0
    {"name": "context_num_calls_and_setters", "kind": "greedy", "lmql": '''argmax
    a = context.num_calls
    "Hello[WHO]" where len(TOKENS(WHO)) < 4
    b = context.num_calls
    context.set_decoder("sample", temperature=0.5)
    context.set_where_clause(None)
    c = context.num_calls
    "And[X]" where STOPS_AT(X, ".") and len(TOKENS(X)) < 12
    d = context.num_calls
    context.set_model("local:no-such-model")
    "And[Y]" where len(TOKENS(Y)) < 3
    return [a == 0, 0 < b == c < d, context.num_calls, WHO, X, Y]'''},
]
