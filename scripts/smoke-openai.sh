#!/usr/bin/env bash
# Smoke test of the OpenAI dialect against a running switchyard:
# GET /v1/models, then POST /v1/chat/completions without and with streaming.
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

# The chat request body, with the model and prompt JSON-escaped.
chat_body() {
    MODEL="$MODEL" PROMPT="$PROMPT" STREAM="$1" python3 -c '
import json, os
body = {"model": os.environ["MODEL"],
        "messages": [{"role": "user", "content": os.environ["PROMPT"]}]}
if os.environ["STREAM"] == "1":
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
print(json.dumps(body))'
}

echo "switchyard at $BASE, model $MODEL"

echo
echo "==> GET /v1/models"
call GET /v1/models
python3 - "$WORK/body" <<'EOF' || fail "GET /v1/models: not an OpenAI model list"
import json, sys
body = json.load(open(sys.argv[1]))
assert body.get("object") == "list", "object is not \"list\""
ids = [m["id"] for m in body["data"]]
print(f"    {len(ids)} models: " + (", ".join(ids) if ids else "(none)"))
EOF

echo
echo "==> POST /v1/chat/completions (no stream)"
call POST /v1/chat/completions "$(chat_body 0)"
python3 - "$WORK/body" <<'EOF' || fail "POST /v1/chat/completions: not a chat.completion"
import json, sys
body = json.load(open(sys.argv[1]))
assert body.get("object") == "chat.completion", "object is not \"chat.completion\""
choice = body["choices"][0]
print(f"    content: {choice['message'].get('content')!r}")
print(f"    finish_reason: {choice['finish_reason']}, usage: {body.get('usage')}")
EOF

echo
echo "==> POST /v1/chat/completions (stream, include_usage)"
call POST /v1/chat/completions "$(chat_body 1)"
python3 - "$WORK/body" <<'EOF' || fail "POST /v1/chat/completions (stream): bad SSE stream (above)"
import json, sys
lines = [l.rstrip("\r") for l in open(sys.argv[1], encoding="utf-8")]
data = [l[len("data:"):].strip() for l in lines if l.startswith("data:")]
if not data:
    sys.exit("    no data: events in the stream")
text, usage, finish = [], None, None
for payload in data:
    if payload == "[DONE]":
        continue
    event = json.loads(payload)
    if "error" in event:
        sys.exit(f"    the stream carried an error event: {payload}")
    for choice in event.get("choices", []):
        text.append(choice.get("delta", {}).get("content") or "")
        finish = choice.get("finish_reason") or finish
    usage = event.get("usage") or usage
print(f"    {len(data)} events, content: {''.join(text)!r}")
print(f"    finish_reason: {finish}, usage: {usage}")
if data[-1] != "[DONE]":
    sys.exit(f"    the stream does not end with data: [DONE]; last event: {data[-1]}")
if usage is None:
    sys.exit("    no usage chunk although stream_options.include_usage was set")
print("    ends with data: [DONE]")
EOF

echo
echo "OK: OpenAI dialect works at $BASE with model $MODEL"
