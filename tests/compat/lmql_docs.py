"""The programs of LMQL 0.7.3's documentation pages, with only the model changed, under LMQL 0.7.3
and under lmql-core: which end differently.

    python tests/compat/lmql_docs.py --lmql-python /work/lmql073/bin/python [--model FOLDER]

Pages (eth-sri/lmql at v0.7.3): getting started, overview, constraints, scripted prompting, tools
(their ``lmql`` code blocks) and Python integration (the notebook's code cells). Every model name
becomes ``local:<folder>`` (``lmql_suite.swap_models``); programs without one run on that model
(``lmql_docs_driver.py``). Prints each program's end on both sides (ok with its result, or the
error's first line) and lists those that end differently. Exit status 0 either way.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lmql_suite import MIRROR, SIDES, TAG, environments, swap_models  # noqa: E402

DRIVER = HERE / "lmql_docs_driver.py"
PAGES = ["docs/docs/index.md", "docs/docs/language/overview.md", "docs/docs/language/constraints.md",
         "docs/docs/language/scripted-prompting.md", "docs/docs/language/tools.md", "docs/docs/lib/python.ipynb"]
LMQL_BLOCK = re.compile(r"```\s*\{?lmql\}?[ \t]*\n(.*?)```", re.DOTALL)
DOC_DIRECTIVE = re.compile(r"^(name::\S+|#notebooks\.js:.*)\s*$", re.MULTILINE)


@dataclass
class Program:
    label: str
    kind: str  # "lmql" or "python"
    source: str


def page_text(page: str) -> str:
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"{TAG}:{page}"], check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def programs_of(page: str, text: str) -> list[Program]:
    """An ``.md`` page's lmql blocks; a notebook's code cells, except its hidden set-up cells."""
    stem = Path(page).stem
    if page.endswith(".ipynb"):
        cells = ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
        return [Program(f"{stem}#{i}", "python", DOC_DIRECTIVE.sub("", c).strip())
                for i, c in enumerate(cells, 1) if not c.startswith("#notebooks.js:hidden")]
    return [Program(f"{stem}#{i}", "lmql", DOC_DIRECTIVE.sub("", block).strip())
            for i, block in enumerate(LMQL_BLOCK.findall(text), 1)]


def run_program(python: str, program: Program, path: Path, model: str, env: dict[str, str],
                timeout: float) -> dict:
    path.write_text(swap_models(program.source, model))
    try:
        proc = subprocess.run([python, str(DRIVER), program.kind, str(path), model], env=env, timeout=timeout,
                              capture_output=True, text=True, cwd=path.parent)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "result": None}
    for line in proc.stdout.splitlines():
        if line.startswith("LMQL_DOC "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return {"ok": False, "error": f"crashed: {tail}", "result": None}


def end(record: dict) -> str:
    return "ok " + json.dumps(record["result"])[:60] if record["ok"] else "ERROR " + record["error"][:100]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmql-python", required=True)
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--model", type=Path, help="model folder (default: build_model.py builds one)")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per program and side")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-k", dest="only", default="", help="only programs whose label contains this")
    args = parser.parse_args(argv)

    work = (args.work or Path(tempfile.mkdtemp(prefix="lmql-docs-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder = args.model
    if folder is None:
        from build_model import build

        folder = work / "model"
        build(folder)
    model = f"local:{folder.resolve()}"
    programs = [p for page in PAGES for p in programs_of(page, page_text(page)) if args.only in p.label]
    envs = environments(work, work)
    pythons = {SIDES[0]: args.lmql_python, SIDES[1]: args.ours_python}
    jobs = [(side, p) for p in programs for side in SIDES]

    def one(job: tuple[str, Program]) -> dict:
        side, p = job
        path = work / "programs" / side.replace(" ", "_") / p.label.replace("#", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        record = run_program(pythons[side], p, path.with_suffix(".lmql" if p.kind == "lmql" else ".py"), model,
                             envs[side], args.timeout)
        print(f"  {p.label} on {side}: {end(record)}", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        ends = dict(zip([(s, p.label) for s, p in jobs], pool.map(one, jobs), strict=True))
    print(f"model: {model} on both sides; {len(programs)} programs")
    differ = []
    for p in programs:
        theirs, ours = ends[SIDES[0], p.label], ends[SIDES[1], p.label]
        print(f"{p.label:<24} LMQL 0.7.3: {end(theirs)}\n{'':<24} ours:       {end(ours)}")
        if theirs["ok"] != ours["ok"] or (not theirs["ok"] and theirs["error"].split(":")[0] != ours["error"].split(":")[0]):
            differ.append((p, theirs, ours))
    print(f"\n{len(differ)} of {len(programs)} programs end differently "
          f"({sum(ends[SIDES[0], p.label]['ok'] for p in programs)} end ok on LMQL 0.7.3):")
    for p, theirs, ours in differ:
        print(f"  {p.label}: LMQL 0.7.3 {end(theirs)}; ours {end(ours)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
