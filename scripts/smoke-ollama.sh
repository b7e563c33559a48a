#!/usr/bin/env bash
# Smoke test of the Ollama dialect against a running switchyard:
# GET /api/version and /api/tags, then POST /api/chat streamed (Ollama's default) and
# with "stream": false.
#
#   SWITCHYARD_URL  gateway address            (default http://127.0.0.1:8787)
#   MODEL           model to chat with         (default echo; e.g. ollama/llama3:instruct)
#   SWITCHYARD_KEY  gateway key, if keys are configured (sent as Authorization: Bearer)
#   SMOKE_TIMEOUT   seconds allowed per request (default 300; a model may need to load)
#
# Needs curl and python3. Exits non-zero, saying what failed, on the first problem.
set -euo pipefail

# shellcheck source=scripts/smoke-common.sh
source "$(dirname "$0")/smoke-common.sh"

# The chat request body, with the model and prompt JSON-escaped. STREAM=default leaves
# "stream" out, as Ollama clients do, which means streaming.
chat_body() {
    MODEL="$MODEL" PROMPT="$PROMPT" STREAM="$1" python3 -c '
import json, os
body = {"model": os.environ["MODEL"],
        "messages": [{"role": "user", "content": os.environ["PROMPT"]}]}
if os.environ["STREAM"] == "false":
    body["stream"] = False
print(json.dumps(body))'
}

echo "switchyard at $BASE, model $MODEL"

echo
echo "==> GET /api/version"
call GET /api/version
python3 - "$WORK/body" <<'EOF' || fail "GET /api/version: no version in the answer"
import json, sys
print(f"    version: {json.load(open(sys.argv[1]))['version']}")
EOF

echo
echo "==> GET /api/tags"
call GET /api/tags
python3 - "$WORK/body" <<'EOF' || fail "GET /api/tags: not an Ollama model list"
import json, sys
names = [m["name"] for m in json.load(open(sys.argv[1]))["models"]]
print(f"    {len(names)} models: " + (", ".join(names) if names else "(none)"))
EOF

echo
echo "==> POST /api/chat (stream, the default)"
call POST /api/chat "$(chat_body default)"
python3 - "$WORK/body" <<'EOF' || fail "POST /api/chat (stream): bad NDJSON stream (above)"
import json, sys
lines = [l for l in open(sys.argv[1], encoding="utf-8").read().split("\n") if l.strip()]
if not lines:
    sys.exit("    empty stream")
events = []
for line in lines:
    try:
        events.append(json.loads(line))
    except ValueError:
        sys.exit(f"    a line is not JSON: {line!r}")
for event in events:
    if "error" in event:
        sys.exit(f"    the stream carried an error line: {json.dumps(event)}")
text = "".join(e.get("message", {}).get("content", "") for e in events)
last = events[-1]
print(f"    {len(events)} lines, content: {text!r}")
if last.get("done") is not True:
    sys.exit(f"    the last line does not have \"done\": true: {json.dumps(last)}")
print(f"    last line: done: true, done_reason: {last.get('done_reason')}, "
      f"prompt_eval_count: {last.get('prompt_eval_count')}, eval_count: {last.get('eval_count')}")
EOF

echo
echo "==> POST /api/chat (\"stream\": false)"
call POST /api/chat "$(chat_body false)"
python3 - "$WORK/body" <<'EOF' || fail "POST /api/chat (no stream): not one finished chat answer"
import json, sys
body = json.load(open(sys.argv[1]))
print(f"    content: {body['message'].get('content')!r}")
if body.get("done") is not True:
    sys.exit(f"    the answer does not have \"done\": true: {json.dumps(body)}")
print(f"    done: true, done_reason: {body.get('done_reason')}, "
      f"prompt_eval_count: {body.get('prompt_eval_count')}, eval_count: {body.get('eval_count')}")
EOF

echo
echo "OK: Ollama dialect works at $BASE with model $MODEL"
