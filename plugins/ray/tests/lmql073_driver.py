"""Run by LMQL 0.7.3's Python (not ours): its client generates, scores and runs a query on the
LMTP endpoint in argv[1] (model lmql-tiny, tokenizer from the folder in argv[2]); prints JSON."""

import asyncio
import json
import sys

import lmql

QUERY = '''
argmax
    "Q: Name a colour.\\nA:[ANSWER]\\nQ: And another?\\nA:[OTHER]"
where
    len(TOKENS(ANSWER)) < 6 and len(TOKENS(OTHER)) < 6
'''


async def main(endpoint: str, folder: str) -> None:
    m = lmql.model("lmql-tiny", endpoint=endpoint, tokenizer=folder)
    generated = await m.generate("Once upon a time", max_tokens=16)
    scored = await m.score("The cat sat on the", [" mat", " hat"])
    result = await lmql.run(QUERY, model=m)
    scores = [list(map(float, s)) for s in scored.token_scores]
    variables = {k: v for k, v in result.variables.items() if k.isupper()}
    print(json.dumps({"generate": generated, "token_scores": scores, "query": variables}))


asyncio.run(main(sys.argv[1], sys.argv[2]))
