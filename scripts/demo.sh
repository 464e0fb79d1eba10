#!/usr/bin/env bash
# The main job: install lmql-core with the HF backend into .venv, serve the bundled lmql-tiny
# model over LMTP, and generate from it through the websocket client.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8080}"
if [ ! -x .venv/bin/lmql ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0        # the CPU build, first
    .venv/bin/pip install -q ./ ./plugins/hf
fi
.venv/bin/lmql serve-model lmql-tiny --port "$PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
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
PY
