#!/usr/bin/env bash
# The main job: install lmql-core with the HF backend into .venv, serve the bundled lmql-tiny
# model over LMTP, and generate from it through the websocket client.
# PORT=9000 bash scripts/demo.sh serves on another port (default 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
if (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is in use (another server?): stop it, or pick another port: PORT=9000 bash $0" >&2
    exit 1
fi
if [ ! -x .venv/bin/lmql ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0        # the CPU build, first
    .venv/bin/pip install -q ./ ./plugins/hf
fi
LOG="$(mktemp)"
.venv/bin/lmql serve-model lmql-tiny --port "$PORT" 2> >(tee "$LOG" >&2) &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
until grep -q "^Ready" "$LOG"; do   # the server says Ready once its socket serves
    kill -0 $SERVER 2>/dev/null || { echo "the server did not start" >&2; exit 1; }
    sleep 0.5
done
.venv/bin/lmql generate "Once upon a time" --endpoint "localhost:$PORT" --max-tokens 40
.venv/bin/lmql generate "The meaning of life is" --endpoint "localhost:$PORT" --max-tokens 40 --temperature 0.8
.venv/bin/python - "$PORT" <<'PY'
import sys, lmql
llm = lmql.model("lmql-tiny", endpoint=f"localhost:{sys.argv[1]}")
result = llm.score_sync("The cat sat on the", [" mat", " xqzv"])
print(result)
# an LMQL program on the served model
answer = lmql.run_sync("""argmax
    "Q: Where did the cat sit?\\nA: On the[PLACE]" where PLACE in [" mat", " sofa", " roof"]
""", model=llm)
print(answer.prompt)
PY
