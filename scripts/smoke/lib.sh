# Shared by every script in scripts/smoke/ (sourced, not run): settings from the
# environment, what was sent and what came back, and the checks of an answer.
# shellcheck shell=bash

BASE="${SWITCHYARD_URL:-http://127.0.0.1:8787}"
BASE="${BASE%/}"
MODEL="${SWITCHYARD_MODEL:-echo}"
PROMPT="${SMOKE_PROMPT:-Hello from the switchyard smoke test}"
TIMEOUT="${SMOKE_TIMEOUT:-300}"
NAME="$(basename "$0")"

usage_if_asked() {
    case "${1:-}" in
        -h|--help)
            cat <<USAGE
usage: scripts/smoke/$NAME
  $SMOKE_WHAT
Environment:
  SWITCHYARD_URL    gateway address (default http://127.0.0.1:8787)
  SWITCHYARD_KEY    gateway key, sent as Authorization: Bearer (unset: no key)
  SWITCHYARD_MODEL  model to ask (default echo; the echo backend's answer is checked
                    word for word, any other model's for shape and non-empty text)
  SMOKE_TIMEOUT     seconds per request (default 300: a model may need to load)
Prints what it sends and what came back; exits 1 on a wrong answer or status.
USAGE
            exit 0 ;;
    esac
}

fail() {
    echo "FAIL $NAME: $*" >&2
    exit 1
}

command -v curl >/dev/null || fail "curl is not installed"
command -v python3 >/dev/null || fail "python3 is not installed (used to read JSON)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# request METHOD PATH [BODY]: sends with the configured key, prints both sides, leaves
# the answer in $WORK/body and its status in $STATUS.
request() {
    local method="$1" path="$2" key="${KEY_OVERRIDE-${SWITCHYARD_KEY:-}}"
    local args=(-sS -N -X "$method" --max-time "$TIMEOUT" -o "$WORK/body" -w '%{http_code}')
    [[ -n "$key" ]] && args+=(-H "Authorization: Bearer $key")
    echo ">>> $method $BASE$path"
    if [[ $# -ge 3 ]]; then
        args+=(-H "Content-Type: application/json" --data-binary "$3")
        echo ">>> $3"
    fi
    STATUS="$(curl "${args[@]}" "$BASE$path")" \
        || fail "$method $path: no answer from $BASE (is switchyard running? set SWITCHYARD_URL)"
    echo "<<< HTTP $STATUS"
    head -c 4000 "$WORK/body"
    echo
}

# call METHOD PATH [BODY]: request, and fail unless the status is 200.
call() {
    request "$@"
    case "$STATUS" in
        200) ;;
        401) fail "$1 $2: HTTP 401: set SWITCHYARD_KEY to a key from the gateway's keys file" ;;
        *) fail "$1 $2: HTTP $STATUS" ;;
    esac
}

# json EXPR [ARGS...]: a JSON request body from a Python expression over `model`,
# `prompt` and `stream` (the first argument after EXPR, default false).
json() {
    MODEL="$MODEL" PROMPT="$PROMPT" STREAM="${2:-0}" python3 -c '
import json, os
model, prompt, stream = os.environ["MODEL"], os.environ["PROMPT"], os.environ["STREAM"] == "1"
print(json.dumps('"$1"'))'
}

# check PYTHON: runs a check over the answer (`body` is its text, `lines` its lines,
# `expect_text(text)` compares with the prompt on echo); its exception fails the script.
check() {
    MODEL="$MODEL" PROMPT="$PROMPT" python3 - "$WORK/body" "$1" <<'PY' || fail "wrong answer (above)"
import json, os, sys
body = open(sys.argv[1], encoding="utf-8").read()
lines = [line for line in body.splitlines() if line.strip()]
model, prompt = os.environ["MODEL"], os.environ["PROMPT"]
def expect_text(text):
    if model == "echo" or model.startswith("echo/"):
        assert text == prompt, f"echo answered {text!r}, expected {prompt!r}"
    else:
        assert text.strip(), "the answer holds no text"
def sse_data():
    events = [l[len("data: "):] for l in lines if l.startswith("data: ")]
    assert events and events[-1] == "[DONE]", "the stream does not end with data: [DONE]"
    return [json.loads(e) for e in events[:-1]]
def ndjson():
    objects = [json.loads(l) for l in lines]
    assert objects and objects[-1].get("done") is True, "the last line is not done: true"
    return objects
exec(sys.argv[2])
PY
    echo "ok $NAME"
}
