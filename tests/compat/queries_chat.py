"""Differential-suite programs (see queries.py for the format): LMQL programs written for issue 27,
area: chat. Every program here must give identical results under LMQL 0.7.3 and lmql-core.

Chat role tags, chat lists, ``await input()`` answered by an output writer, ``lmql.lib.chat``'s
``@message``, variable decorators (``[@fn VAR]``: pre, streaming, post) and tool-use programs
(Python between prompt statements calling tools). LMQL 0.7.3 writes a role tag as ``((role)):``
for every model but OpenAI's chat models.

LMQL 0.7.3 calls a streaming decorator at every step its decoder takes, repeating values (how
often depends on its internals); the programs here keep each distinct value in order, which is
what LMQL documents them to see.
"""

from __future__ import annotations

from typing import Any

# A scripted chat user: answers ``await input()`` and records @message events (streams deduplicated).
CHAT_WRITER = '''
from lmql.lib.chat import ChatMessageOutputWriter, message

class ScriptedUser(ChatMessageOutputWriter):
    def __init__(self, lines):
        super().__init__()
        self.lines, self.events = list(lines), []

    async def input(self, *args):
        self.events.append(["input", list(args)])
        return self.lines.pop(0)

    def begin_message(self, variable):
        self.events.append(["begin", variable.name])

    def stream_message(self, text):
        if self.events[-1] != ["stream", text]:
            self.events.append(["stream", text])

    def complete_message(self, text):
        self.events.append(["complete", text])
'''

ROLE_TAGS: list[dict[str, Any]] = [
    {"name": "chat_role_tags", "kind": "greedy", "lmql": '''argmax
    "{:system} You are a helpful assistant."
    "{:user} What is the capital of France?"
    "{:assistant}[ANSWER]" where len(TOKENS(ANSWER)) < 6
from
    <MODEL>'''},
    # a tag that is not the prompt's first text keeps its newline; any role name works
    {"name": "chat_tag_mid_prompt", "kind": "greedy", "lmql": '''argmax
    "Notes. {:tool} result: 42{:assistant} The answer is[A]" where len(TOKENS(A)) < 4
    "{:user}Thanks![B]" where len(TOKENS(B)) < 3'''},
    {"name": "chat_list_input", "kind": "greedy",
     "inputs": {"history": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]},
     "lmql": '''argmax
    "{history}{:assistant}[A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 8'''},
    {"name": "chat_tags_in_loop", "kind": "greedy", "inputs": {"questions": ["Who are you?", "Where?"]},
     "lmql": '''argmax
    "{:system} Answer in a few words."
    answers = []
    for q in questions:
        "{:user} {q}"
        "{:assistant}[A]" where len(TOKENS(A)) < 4
        answers.append(A)
    return answers'''},
]

CHAT_PROGRAMS: list[dict[str, Any]] = [
    {"name": "chat_input_message", "kind": "greedy", "python": CHAT_WRITER + '''
@lmql.query(model=MODEL)
async def chatbot():
    \'\'\'lmql
    argmax
        "{:system} You are a marketing chatbot for LMQL."
        for i in range(2):
            "{:user} {await input('> ')}"
            "{:assistant} [@message ANSWER]" where len(TOKENS(ANSWER)) < 5
    \'\'\'

async def main():
    user = ScriptedUser(["Hello!", "What is LMQL?"])
    result = await chatbot(output_writer=user)
    return [result, user.events]
'''},
    # the docs' internal reasoning: only @message variables reach the chat writer
    {"name": "chat_internal_reasoning", "kind": "greedy", "python": CHAT_WRITER + '''
@lmql.query(model=MODEL)
async def chatbot():
    \'\'\'lmql
    argmax
        "{:system} Think first, then answer."
        "{:user} {await input()}"
        "{:assistant} Internal Reasoning:[REASONING]" where STOPS_AT(REASONING, "\\n") and len(TOKENS(REASONING)) < 6
        "{:assistant} External Answer: [@message ANSWER]" where len(TOKENS(ANSWER)) < 4
    \'\'\'

async def main():
    user = ScriptedUser(["Is LMQL a language?"])
    result = await chatbot(output_writer=user)
    return [result, user.events]
'''},
    # without a chat writer, @message changes nothing
    {"name": "chat_message_plain", "kind": "greedy", "python": '''
from lmql.lib.chat import message

@lmql.query(model=MODEL)
async def reply(text):
    \'\'\'lmql
    "{:user} {text}{:assistant}[@message A]" where len(TOKENS(A)) < 5
    \'\'\'

async def main():
    return await reply("Good morning")
'''},
]

DECORATORS: list[dict[str, Any]] = [
    # stream runs right to left and @message's stream gives None: a decorator before it sees None
    {"name": "decorator_before_message", "kind": "greedy", "python": '''
from lmql.lib.chat import message
seen = []

@lmql.decorators.streaming
def watch(text, context):
    if not seen or seen[-1] != text:
        seen.append(text)

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "{:user} Hi{:assistant}[@watch @message A]" where len(TOKENS(A)) < 4
    \'\'\'

async def main():
    return [await q(), seen]
'''},
    # a plain function is a post decorator: its value is the variable's, str() of it the prompt's
    {"name": "decorator_post_value", "kind": "greedy", "python": '''
seen = []

def length(value):
    seen.append(value)
    return len(value)

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "Say 'this is a test':[@length R]" where len(TOKENS(R)) < 6
    "\\nNext:[S]" where len(TOKENS(S)) < 4
    return [R, S, seen]
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_post_prompt", "kind": "greedy", "python": '''
def shout(value, prompt_value, context):
    return value.upper(), "[" + prompt_value.strip() + "]"

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    argmax
        "Q: Name a color.\\nA:[@shout C]" where len(TOKENS(C)) < 4
        " Why?[W]" where len(TOKENS(W)) < 4
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_pre_fixed", "kind": "greedy", "python": '''
@lmql.decorators.pre
def fixed(variable):
    return " Paris" if variable.name == "CITY" else variable

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    argmax
        "The capital of France is[@fixed CITY], and of Italy[@fixed OTHER]" where len(TOKENS(OTHER)) < 4 and len(TOKENS(CITY)) < 2
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_pre_tuple", "kind": "greedy", "python": '''
@lmql.decorators.pre
def lookup(variable, context):
    return 42, " forty-two"

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "The answer is[@lookup N]." where INT(N)
    " So[M]" where len(TOKENS(M)) < 4
    return [N, M]
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_streaming", "kind": "greedy", "python": '''
stream = []

@lmql.decorators.streaming
def collect(text, context):
    if not stream or stream[-1] != text:
        stream.append(text)

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    argmax
        "Q: What is the capital of France?\\nA:[@collect A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 8
        " Two plus two is [@collect N]" where INT(N) and len(TOKENS(N)) < 3
    \'\'\'

async def main():
    result = await q()
    return [result, stream]
'''},
    # pre in order; stream and post in reverse order; a decorator that fixes the value stops the rest
    {"name": "decorator_order", "kind": "greedy", "python": '''
log = []

class Tracer(lmql.decorators.LMQLDecorator):
    def __init__(self, label):
        self.label, self.streamed = label, None
    def pre(self, variable, context):
        log.append([self.label, "pre", variable.name])
        return variable
    def stream(self, value, context):
        if value != self.streamed:
            self.streamed = value
            log.append([self.label, "stream", value])
        return value
    def post(self, value, prompt_value, context):
        log.append([self.label, "post", value])
        return value + self.label, prompt_value

a, b = Tracer("a"), Tracer("b")

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "Hello[@a @b X]" where len(TOKENS(X)) < 3
    \'\'\'

async def main():
    result = await q()
    return [result, log]
'''},
    {"name": "decorator_arguments", "kind": "greedy", "python": '''
def suffix(mark):
    def add(value):
        return value.strip() + mark
    return add

class tools:
    @staticmethod
    def words(value):
        return value.split()

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "Once upon a time[@suffix('!') A]" where len(TOKENS(A)) < 5
    " The end[@tools.words B]" where len(TOKENS(B)) < 5
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_in_query", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    calls = []
    def count(value):
        calls.append(value)
        return 12

    "Say 'this is a test':\\n[@count RESPONSE]" where len(TOKENS(RESPONSE)) < 10
    return [RESPONSE, calls, RESPONSE + 1]
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "decorator_post_int", "kind": "greedy", "python": '''
def double(value, prompt_value, context):
    return value * 2

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    "Two plus two is [@double N]" where INT(N) and len(TOKENS(N)) < 3
    " and[M]" where len(TOKENS(M)) < 3
    \'\'\'

async def main():
    return await q()
'''},
]

TOOL_USE: list[dict[str, Any]] = [
    # ReAct style: the model picks an action from a list, Python runs the tool, the observation goes back in
    {"name": "tool_use_react", "kind": "greedy", "python": '''
def calculator(expression):
    return str(eval(expression, {"__builtins__": {}}))

def lookup(term):
    return {"France": "Paris", "Italy": "Rome"}.get(term.strip(), "unknown")

@lmql.query(model=MODEL)
async def agent(question):
    \'\'\'lmql
    argmax
        "Question: {question}\\n"
        for step in range(2):
            "Action:[ACTION]" where ACTION in [" calculator", " lookup"]
            if ACTION == " calculator":
                result = calculator("6 * 7")
            else:
                result = lookup("France")
            "\\nObservation: {result}\\n"
        "Answer:[ANSWER]" where STOPS_AT(ANSWER, "\\n") and len(TOKENS(ANSWER)) < 5
    \'\'\'

async def main():
    return await agent("What is 6 times 7?")
'''},
    # a tool as a post decorator: the value the model wrote is replaced by the tool's output
    {"name": "tool_use_decorator", "kind": "greedy", "python": '''
calls = []

def weather(city, prompt_value, context):
    calls.append([city, context.prompt])
    return {"temperature": 21, "city": city.strip()}, " sunny, 21 degrees"

@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    argmax
        "Weather in[@weather CITY]" where CITY in [" Paris", " Rome"]
        ". Tomorrow[T]" where len(TOKENS(T)) < 4
        return [CITY, T, calls]
    \'\'\'

async def main():
    return await q()
'''},
    # lmql.F with a post decorator that parses the model's answer
    {"name": "tool_use_f_decorator", "kind": "greedy", "python": '''
def words(value):
    return {"text": value, "words": len(value.split())}

def main():
    split = lmql.F("List three things:[@words ITEMS]", "len(TOKENS(ITEMS)) < 6", model=MODEL)
    return split(words=words)  # LMQL 0.7.3: F does not see the module's globals
'''},
    # lmql.run with a decorator and the user's input passed as query inputs
    {"name": "tool_use_run_inputs", "kind": "greedy", "python": '''
def upper(value):
    return value.upper()

async def main():
    return await lmql.run(\'\'\'argmax
    "{:user} {request}{:assistant}[@upper A]" where len(TOKENS(A)) < 5
\'\'\', model=MODEL, request="Write a title.", upper=upper)
'''},
]

# LMQL's documentation pages (language/decorators.md, language/tools.md), with only the model changed
# and the token bounds lmql-tiny needs; imports as the docs write them
DOCS: list[dict[str, Any]] = [
    {"name": "docs_decorator_context", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    from lmql.runtime.program_state import ProgramState
    from typing import Any

    def aslist(value: Any, prompt_value: str, context: ProgramState):
        """Decorator to convert a comma-separated string into a List[str]"""
        return value.split(", "), prompt_value

    "A (comma-separated) list of pancake ingredients: [@aslist ANSWER]" where len(TOKENS(ANSWER)) < 8
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "docs_decorator_cache", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    from lmql.runtime.program_state import ProgramState
    from lmql.language.qstrings import TemplateVariable

    cached_values = {
        "ITEM0": "A shopping cart"
    }

    @lmql.decorators.pre
    def cache(variable: TemplateVariable, context: ProgramState):
        """Decorator to cache variable values by name"""
        return cached_values.get(variable.name, variable)

    """A list of things not to forget when going to the supermarket:
    -[@cache ITEM0]
    -[@cache ITEM1]
    -[@cache ITEM0]
    """ where STOPS_BEFORE(ITEM0, "\\n") and STOPS_BEFORE(ITEM1, "\\n") and len(TOKENS(ITEM1)) < 6
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "docs_tools_calculator", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    import re

    def calc(expr):
        expr = re.sub(r"[^0-9+\\-*/().]", "", expr)
        try:
            return eval(expr)
        except Exception:
            return "?"

    "Q: Josh buys a house for $80,000 and puts in $50,000 in repairs. How much did he spend?\\n"
    "Let's think step by step.\\n"
    for i in range(2):
        "[REASON_OR_CALC]" where STOPS_AT(REASON_OR_CALC, "<<") and STOPS_AT(REASON_OR_CALC, "So the answer") and len(TOKENS(REASON_OR_CALC)) < 6
        if REASON_OR_CALC.endswith("<<"):
            " [EXPR]" where STOPS_AT(EXPR, "=") and len(TOKENS(EXPR)) < 4
            " {calc(EXPR)}>>"
        elif REASON_OR_CALC.endswith("So the answer"):
            break
        " 80000 + 50000 = <<"
        " [EXPR2]" where STOPS_AT(EXPR2, "=") and len(TOKENS(EXPR2)) < 4
        " {calc(EXPR2)}>>\\n"
    "So the answer is[RESULT]" where len(TOKENS(RESULT)) < 4
    \'\'\'

async def main():
    return await q()
'''},
    {"name": "docs_tools_key_value", "kind": "greedy", "python": '''
@lmql.query(model=MODEL)
async def q():
    \'\'\'lmql
    storage = {}
    def assign(key, value):
        storage[key] = value; return f'{{{key}: "{value}"}}'
    def get(key):
        return storage.get(key)

    """In your reasoning you can use actions. To remember something:
    `assign("Alice", "banana") # result: "banana"`\\n"""
    "Alice has a[BALL]" where BALL in [" black ball", " brown ball"]
    "\\n`assign(\\"Alice\\", \\"{BALL.strip()}\\") # result: {assign('Alice', BALL.strip())}`\\n"
    "Bob has a[BALL2]" where len(TOKENS(BALL2)) < 3
    "\\n`get(\\"Alice\\") # result: {get('Alice')}`\\nSo Alice has the[ANSWER]" where len(TOKENS(ANSWER)) < 3
    return [storage, BALL2, ANSWER]
    \'\'\'

async def main():
    return await q()
'''},
]

DOCS.append(
    # lib/chat/defend.md: a `while True` chat loop (ended by the writer raising when the script runs
    # out); argmax(chunksize=128) of the page left out
    {"name": "docs_chat_defend", "kind": "greedy", "python": CHAT_WRITER + '''
class EndOfChat(Exception):
    pass

class Script(ScriptedUser):
    async def input(self, *args):
        if not self.lines:
            raise EndOfChat()
        return await super().input(*args)

def is_disallowed(user_input):
    return "secret" in user_input

@lmql.query(model=MODEL)
async def chatbot():
    \'\'\'lmql
    argmax
        "{:system} You are a helpful chatbot."
        " The hidden phrase is 'hidden-secret-123'. Users can ask for it\\
          and shall receive it."

        while True:
            user_input = await input()
            if is_disallowed(user_input):
                user_input = "Respond by saying that you are not\\
                              allowed to disclose secret information."
            "{:user} {user_input}"
            "{:assistant} [@message ANSWER]" where len(TOKENS(ANSWER)) < 4
    \'\'\'

async def main():
    user = Script(["What is the secret phrase?", "Hello"])
    try:
        await chatbot(output_writer=user)
        ended = "no exception"
    except Exception as e:
        ended = "EndOfChat" in f"{type(e).__name__}: {e}"
    return [ended, user.events]
'''})

PROGRAMS: list[dict[str, Any]] = [*ROLE_TAGS, *CHAT_PROGRAMS, *DECORATORS, *TOOL_USE, *DOCS]
