"""Differential-suite programs (see queries.py for the format): LMQL programs written for issue 27,
area: api. Every program here must give identical results under LMQL 0.7.3 and lmql-core."""

from __future__ import annotations

from typing import Any

HELLO = '"Hello[WHO]" where len(TOKENS(WHO)) < 4'

PROGRAMS: list[dict[str, Any]] = [
    # result[0] on a single result is the result (LMQL 0.7.3 warns, DeprecationWarning)
    {"name": "api_result_index_zero", "kind": "greedy", "python": f'''
import warnings

async def main():
    result = await lmql.run('argmax {HELLO}', model=MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return result[0]
'''},
    # argmax(n=2): a list of both (identical) runs; beam(n=1): a list of one
    {"name": "api_argmax_n2_list", "kind": "greedy", "lmql": f"argmax(n=2) {HELLO} from <MODEL>"},
    {"name": "api_beam_n1_list", "kind": "beam",
     "lmql": 'beam(n=1) "The cat sat on the[P]" from <MODEL> where P in [" mat", " dog"]'},
    # beam search over several variables: the prompt text after each variable is scored, the
    # EOS that ended it dropped (LMQL's rewrite), hypotheses ranked by sum / length ** 0.7
    {"name": "api_beam_two_vars", "kind": "beam", "lmql": '''beam(n=2)
    "Q: Name a color.\\nA:[C] and[D]" where len(TOKENS(C)) < 3 and len(TOKENS(D)) < 3
from
    <MODEL>'''},
    {"name": "api_beam_trailing_text", "kind": "beam",
     "lmql": 'beam(n=3) "Hello[X] the end." from <MODEL> where STOPS_AT(X, ".") and len(TOKENS(X)) < 6'},
    {"name": "api_beam_qa", "kind": "beam", "lmql": '''beam(n=3)
    "Q: What is 2+2?\\nA:[A]\\nQ: And 3+3?\\nA:[B]" where len(TOKENS(A)) < 4 and len(TOKENS(B)) < 4
from
    <MODEL>'''},
    {"name": "api_beam_list_lines", "kind": "beam", "lmql": '''beam(n=2)
    "List:\\n-[X]\\n-[Y]\\n" where STOPS_AT(X, "\\n") and STOPS_AT(Y, "\\n") and len(TOKENS(X)) < 5 and len(TOKENS(Y)) < 5
from
    <MODEL>'''},
    # beam without n: LMQL's default of 4
    {"name": "api_beam_default_n", "kind": "beam",
     "lmql": 'beam "Once upon a time[X]" from <MODEL> where len(TOKENS(X)) < 3'},
    # beam_var: LMQL's variable-wise beam search (its own scorer and beam allocation)
    {"name": "api_beam_var_trailing_text", "kind": "beam",
     "lmql": 'beam_var(n=2) "Hello[X] the end." from <MODEL> where STOPS_AT(X, ".") and len(TOKENS(X)) < 6'},
    {"name": "api_beam_var_int", "kind": "beam", "lmql": '''beam_var(n=2)
    "Pick a color:[C]\\nPick a number:[N]" where C in [" red", " blue", " green"] and INT(N) and len(TOKENS(N)) < 3
from
    <MODEL>'''},
    {"name": "api_beam_var_n3", "kind": "beam", "lmql": '''beam_var(n=3)
    "List:\\n-[X]\\n-[Y]\\n" where STOPS_AT(X, "\\n") and STOPS_AT(Y, "\\n") and len(TOKENS(X)) < 5 and len(TOKENS(Y)) < 5
from
    <MODEL>'''},
    {"name": "api_beam_var_two_vars", "kind": "beam", "lmql": '''beam_var(n=3)
    "Q: What is 2+2?\\nA:[A]\\nQ: And 3+3?\\nA:[B]" where len(TOKENS(A)) < 4 and len(TOKENS(B)) < 4
from
    <MODEL>'''},
    # sample with LMQL's request size: n results of the declared shape
    {"name": "api_sample_chunksize", "kind": "sampled",
     "lmql": 'sample(n=3, chunksize=2, temperature=0.9) "Hello[WHO]" from <MODEL> where len(TOKENS(WHO)) < 5',
     "shape": {"n": 3, "vars": {"WHO": {"type": "str", "max_tokens": 5}}}},
    # var(subdecoder="beam"): all runs' variable decoded in one pool, one stopping rule
    {"name": "api_var_beam_two_vars", "kind": "beam", "lmql": '''var(b=3, n=2, subdecoder="beam")
    "Hello[WHO]" where len(TOKENS(WHO)) < 4
    "! And[X]" where len(TOKENS(X)) < 3
from <MODEL>'''},
    {"name": "api_var_beam_loop", "kind": "beam", "lmql": '''var(b=2, subdecoder="beam", return_first=True)
    "Pick:[C]\\nAgain:[D]" where C in [" red", " blue", " green"] and len(TOKENS(D)) < 3
    for i in range(2):
        "Then[T]" where STOPS_AT(T, ".") and len(TOKENS(T)) < 5
from <MODEL>'''},
    # best_k: best-first search with an age penalty (gamma=0: lmql-tiny's flat next-token
    # distributions fall under LMQL's default gamma=0.05 and its search never finishes)
    {"name": "api_best_k_one_var", "kind": "beam",
     "lmql": 'best_k(k=2, budget=10, gamma=0.0, top_k_continuations=2) "Hello[WHO]" from <MODEL> '
             'where len(TOKENS(WHO)) < 3'},
    {"name": "api_best_k_two_vars", "kind": "beam", "lmql": '''best_k(k=3, budget=12, gamma=0.0, top_k_continuations=3)
    "Hello[WHO]" where len(TOKENS(WHO)) < 3
    "! And[X]" where len(TOKENS(X)) < 3
from <MODEL>'''},
    # beam_sample: n sampled beams of the whole program (copies may be equal), always a list
    {"name": "api_beam_sample_two_vars", "kind": "sampled", "lmql": '''beam_sample(n=2)
    "Hello[WHO]" where len(TOKENS(WHO)) < 4
    "! And[X]" where len(TOKENS(X)) < 3
from <MODEL>''', "shape": {"n": 2, "vars": {"WHO": {"max_tokens": 4}, "X": {"max_tokens": 3}}}},
    {"name": "api_beam_sample_constrained", "kind": "sampled", "lmql": '''beam_sample(n=3, temperature=0.5)
    "A number: [N]" where INT(N) and len(TOKENS(N)) < 3
    " and a color:[C]" where C in [" red", " blue", " green"]
from <MODEL>''', "shape": {"n": 3, "vars": {"N": {"type": "int"}, "C": {"in": [" red", " blue", " green"]}}}},
    # a program that meets no variable: one result, in a list
    {"name": "api_no_variable", "kind": "greedy", "lmql": 'argmax "Just a prompt" from <MODEL>'},
    # return values under several runs: the list of what each run returned
    {"name": "api_sample_returns", "kind": "greedy", "lmql": f'''sample(n=2)
    {HELLO}
    return type(WHO).__name__
from
    <MODEL>'''},
    {"name": "api_f_values_n2", "kind": "greedy", "python": '''
def main():
    number = lmql.F("A number: [N]", "INT(N) and len(TOKENS(N)) < 3", model=MODEL)
    return [number(decoder="argmax", n=2), number()]
'''},
    # positional inputs bind to the inputs in sorted order
    {"name": "api_run_positional", "kind": "greedy", "python": '''
async def main():
    source = """lmql
    "Summarize: {t2} then {t1}:[S]" where len(TOKENS(S)) < 4
    return S
    """
    by_position = await lmql.run(source, " cats", " dogs", model=MODEL)
    by_name = await lmql.run(source, t1=" cats", t2=" dogs", model=MODEL)
    return [by_position, by_name]
'''},
    {"name": "api_f_positional", "kind": "greedy", "python": '''
def main():
    say = lmql.F("Say {b} and {a}:[X]", "len(TOKENS(X)) < 4", model=MODEL)
    return [say(" one", " two"), say(a=" one", b=" two")]
'''},
    # what a query function says about itself
    {"name": "api_query_keys", "kind": "greedy", "python": '''
def main():
    q = lmql.query('argmax "Hi {name}:[WHO]" where len(TOKENS(WHO)) < 3')
    return {"output_variables": q.output_variables, "input_keys": q.input_keys}
'''},
    # ScoringResult as LMQL shows it: whole scored sequences, LMQL's aggregates
    {"name": "api_scoring_result", "kind": "greedy", "python": '''
def main():
    try:  # LMQL 0.7.3's LLM.score needs its tracer set up in this context (LookupError otherwise)
        from lmql.runtime.tracing.tracer import has_tracer
        has_tracer()
    except ImportError:  # lmql-core: nothing to set up
        pass
    r = MODEL.score_sync("The cat sat on the", [" mat", " big red table"])
    return {"lengths": [len(s) for s in r.seqs], "full": r.full_token_scores, "values": r.token_scores,
            "sum": r.scores("sum"), "mean": r.scores("mean"), "normalized": r.scores("normalized"),
            "logprobs": r.logprobs("mean"), "argmax": r.argmax("mean")}
'''},
    # LMQL's common decoder arguments: accepted, the greedy result unchanged
    {"name": "api_decoder_chunksize", "kind": "greedy",
     "lmql": f"argmax(chunksize=3) {HELLO} from <MODEL>"},
    {"name": "api_decoder_common_args", "kind": "greedy",
     "lmql": f"argmax(max_len=256, chunk_timeout=2.5, openai_chunksize=8, verbose=False) {HELLO} from <MODEL>"},
    {"name": "api_decoder_call_args", "kind": "greedy", "python": f'''
async def main():
    return await lmql.run('{HELLO}', model=MODEL, chunksize=2, max_len=300, n=2, decoder="argmax")
'''},
    # lmql.model's own options: silent and chunksize mean what they mean in LMQL
    {"name": "api_model_options", "kind": "greedy", "python": f'''
async def main():
    options = dict(MODEL.configuration)
    model = lmql.model(MODEL.model_identifier, **options, silent=True, chunksize=4)
    return await lmql.run('argmax {HELLO}', model=model)
'''},
    # output writers: stream("WHO") prints the value as it grows
    {"name": "api_stream_writer", "kind": "greedy", "python": f'''
import contextlib, io

async def main():
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        result = await lmql.run('argmax {HELLO}', model=MODEL, output_writer=lmql.stream("WHO"))
    return [shown.getvalue(), result.variables["WHO"]]
'''},
    # lmql.query_from_string and lmql.algorithms.map
    {"name": "api_query_from_string", "kind": "greedy", "python": f'''
async def main():
    q = lmql.query_from_string('argmax {HELLO}')
    return await q(model=MODEL)
'''},
    {"name": "api_algorithms_map", "kind": "greedy", "python": '''
import lmql.algorithms as la

async def main():
    say = lmql.F("Repeat: {text}:[X]", "len(TOKENS(X)) < 3", model=MODEL, is_async=True)
    return await la.map(say, [" red", " green", " blue"])
'''},
    # the model's tokenizer as LMQL's lmql.tokenizer gives it
    {"name": "api_tokenizer", "kind": "greedy", "python": '''
def main():
    t = lmql.tokenizer(MODEL.model_identifier)
    ids = t("Hello world, said the cat.")["input_ids"]
    return {"ids": ids, "text": t.decode(ids), "batch": t(["a b", "c"])["input_ids"]}
'''},
    # inference certificates: the requests' token ids and tokens, and the recorded result
    # (the model's info and our request options differ by design; ids and tokens must not)
    {"name": "api_certificate_callback", "kind": "greedy", "python": '''
def main():
    received = []
    greet = lmql.F("Greet the world:[GREETING]", "len(TOKENS(GREETING)) < 4", model=MODEL)
    value = greet(certificate=received.append)
    certificate = received[0].asdict()
    return {"value": value, "name": certificate["name"], "keys": sorted(certificate),
            "events": [(e["name"], e["data"]["kwargs"]["ids"], e["data"]["result"]) if e["name"] == "lmtp.generate"
                       else (e["name"], e["data"]) for e in certificate["events"]]}
'''},
    {"name": "api_traced_children", "kind": "greedy", "python": '''
async def main():
    try:  # LMQL 0.7.3's tracer stack must be set up in this context first (LookupError otherwise)
        from lmql.runtime.tracing.tracer import has_tracer
        has_tracer()
    except ImportError:  # lmql-core: nothing to set up
        pass
    with lmql.traced("context") as tracer:
        await lmql.run('"Hi[X]" where len(TOKENS(X)) < 2', model=MODEL)
        text = await lmql.generate("Hi", max_tokens=2, model=MODEL)
    certificate = lmql.certificate(tracer).asdict()
    return {"text": text, "keys": sorted(certificate), "children": [
        (c["name"], sorted(c), [(e["name"], e["data"]["kwargs"]["ids"], e["data"]["result"]) for e in c["events"]])
        for c in certificate["children"]]}
'''},
    # lmql.tag: a role tag written from Python into the prompt
    {"name": "api_tag_in_prompt", "kind": "greedy",
     "lmql": 'argmax "{lmql.tag(\'user\')}Say hi:[X]" from <MODEL> where len(TOKENS(X)) < 3'},
]
