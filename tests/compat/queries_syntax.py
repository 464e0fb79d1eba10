"""Differential-suite programs (see queries.py for the format): LMQL programs written for issue 27,
area: syntax. Every program here must give identical results under LMQL 0.7.3 and lmql-core.

The query language as LMQL's examples write it: upper-case clause keywords, Python before the
decoder keyword, backslash continuations before ``where``, the README's ``not "\\n" in X`` and the
other negations and substring constraints LMQL's ops enforce, and the inputs a query fails
without (LMQL's ``TypeError`` when the query is called, never when it is defined).
"""

from __future__ import annotations

from typing import Any

KEYWORDS: list[dict[str, Any]] = [
    # LMQL's own tests write the clause keywords in upper case (test_eq.py, test_stopping.py)
    {"name": "syntax_upper_case_clauses", "kind": "greedy", "lmql": '''argmax
    "Q: Name a fruit.\\nA:[FRUIT]"
FROM
    <MODEL>
WHERE
    STOPS_AT(FRUIT, "\\n") and len(TOKENS(FRUIT)) < 6'''},
    {"name": "syntax_upper_case_distribution", "kind": "greedy", "lmql": '''argmax
    "Q: Is the sky blue?\\nThink:[T]\\nA:[ANS]"
WHERE
    len(TOKENS(T)) < 4
DISTRIBUTION
    ANS in [" yes", " no"]'''},
    # Python before the decoder keyword is a prologue (LMQL runs it as module code of the query)
    {"name": "syntax_prologue", "kind": "greedy", "lmql": '''import re
limit = 5
def shout(text):
    return re.sub(r"[aeiou]", lambda m: m.group(0).upper(), text)
argmax
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < limit
    return shout(STORY)'''},
    {"name": "syntax_prologue_one_line", "kind": "greedy", "lmql": '''greeting = "Hello"
argmax "{greeting}, my name is[NAME]" where len(TOKENS(NAME)) < 4'''},
    # the constraints page writes prompt and where on two lines joined by a backslash
    {"name": "syntax_backslash_where", "kind": "greedy", "lmql": '''"Greet the user in four different ways: [GREETINGS]" \\
   where len(TOKENS(GREETINGS)) < 10'''},
    {"name": "syntax_backslash_in_loop", "kind": "greedy", "lmql": '''for i in range(2):
    "Step {i}:[STEP]" \\
        where STOPS_AT(STEP, ".") and \\
              len(TOKENS(STEP)) < 5
    "\\n"
"Therefore[OBJECT]" \\
    where STOPS_AT(OBJECT, ".") and len(TOKENS(OBJECT)) < 4'''},
    {"name": "syntax_backslash_after_from", "kind": "greedy",
     "lmql": 'argmax "Hello[WHO]" from <MODEL> \\\nwhere len(TOKENS(WHO)) < 4'},
    # constraints.md and scripted-prompting.md, bounded for lmql-tiny
    {"name": "syntax_docs_backpack", "kind": "greedy", "lmql": '''"A list of things not to forget when going to the sea (not travelling): \\n"
backpack = []
for i in range(3):
   "-[THING]" where STOPS_AT(THING, "\\n") and len(TOKENS(THING)) < 6
   backpack.append(THING.strip())

"The most essential of which is: [ESSENTIAL_THING]" \\
    where ESSENTIAL_THING in backpack
'''},
    {"name": "syntax_docs_regex_date", "kind": "greedy", "lmql": '''"It's the last day of June so today is [DATE]" \\
   where REGEX(DATE, r"[0-9]{2}/[0-9]{2}")'''},
    {"name": "syntax_docs_story", "kind": "greedy", "lmql": '''"A story about life:[STORY]" \\
   where STOPS_AT(STORY, ".") and len(TOKENS(STORY)) > 5 and len(TOKENS(STORY)) < 30'''},
    # a where right after a prompt string constrains that statement only, also on the last line
    {"name": "syntax_last_statement_where", "kind": "greedy", "lmql": '''argmax
    "Pick:[A]" where A in [" red", " blue"]
    "\\nAgain:[B]" where not "e" in A and len(TOKENS(B)) < 3'''},
]

NEGATIONS: list[dict[str, Any]] = [
    # LMQL's README and overview page
    {"name": "syntax_readme_not_newline", "kind": "greedy",
     "lmql": '"Greet LMQL:[GREETINGS]\\n" where stops_at(GREETINGS, ".") and not "\\n" in GREETINGS '
             'and len(TOKENS(GREETINGS)) < 12'},
    {"name": "syntax_overview_not_newline", "kind": "greedy", "lmql": '''review = """We had a great stay. Hiking in the mountains
            was fabulous and the food is really good."""
"Review: {review}"
"Q: What is the underlying sentiment of this review and why?"
"A:[ANALYSIS]" where not "\\n" in ANALYSIS and len(TOKENS(ANALYSIS)) < 12
"Based on this, the overall sentiment of the message\\
 can be considered to be[CLS]" where CLS in [" positive", " neutral", " negative"]
return CLS'''},
    {"name": "syntax_not_letter_in", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < 14 and not "e" in X'},
    {"name": "syntax_not_space_in", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < 10 and not " " in X'},
    {"name": "syntax_not_phrase_across_tokens", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < 14 and not "ou" in X'},
    {"name": "syntax_not_input_in", "kind": "greedy", "inputs": {"sep": ","},
     "lmql": 'argmax "Once upon a time[X]" where not sep in X and len(TOKENS(X)) < 20'},
    {"name": "syntax_phrase_in", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < 20 and "." in X'},
    {"name": "syntax_not_in_or", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where len(TOKENS(X)) < 14 and (not "," in X or not "y" in X)'},
    {"name": "syntax_not_in_later_variable", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]\\nThen[Y]" where len(TOKENS(X)) < 5 and len(TOKENS(Y)) < 6 '
             'and not "e" in Y'},
    {"name": "syntax_not_less_than", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where not len(TOKENS(X)) < 3 and len(TOKENS(X)) < 6'},
    {"name": "syntax_not_greater_than", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where not len(TOKENS(X)) > 3'},
    {"name": "syntax_not_chars_less_than", "kind": "greedy",
     "lmql": 'argmax "Once upon a time[X]" where not len(X) < 5 and len(TOKENS(X)) < 6'},
]

INPUTS: list[dict[str, Any]] = [
    # a file of queries imports even when one constrains a variable it never generates: LMQL
    # fails when that query is called, with a TypeError naming the variable
    {"name": "syntax_unknown_constraint_variable_fails_when_called", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
def broken():
    \'\'\'lmql
    argmax
        "Hello[WHO]" where STOPS_AT(NOT_A_VARIABLE, ".") and len(TOKENS(WHO)) < 4
    \'\'\'

@lmql.query(model=MODEL)
def fine():
    \'\'\'lmql
    argmax
        "Hello[WHO]" where len(TOKENS(WHO)) < 4
        return WHO
    \'\'\'

def main():
    try:
        broken()
        failure = None
    except TypeError as e:
        failure = ["TypeError", "Failed to resolve variable 'NOT_A_VARIABLE' in LMQL query" in str(e)]
    return [fine(), failure]
'''},
    {"name": "syntax_missing_input_fails_when_called", "kind": "greedy", "python": '''
async def main():
    q = lmql.query(\'argmax "Hello {name}, I am[X]" where len(TOKENS(X)) < 4\')
    try:
        await q(model=MODEL)
        failure = None
    except TypeError as e:
        failure = ["TypeError", "Failed to resolve variable 'name' in LMQL query" in str(e)]
    return [failure, (await q(name="Ann", model=MODEL)).variables]
'''},
]

PROGRAMS: list[dict[str, Any]] = [*KEYWORDS, *NEGATIONS, *INPUTS]
