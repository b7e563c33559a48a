# Shared by scripts/smoke-openai.sh and scripts/smoke-ollama.sh (sourced, not run):
# settings from the environment, failure reporting, and `call` for one request.
# shellcheck shell=bash

BASE="${SWITCHYARD_URL:-http://127.0.0.1:8787}"
BASE="${BASE%/}"
MODEL="${MODEL:-echo}"
PROMPT="${PROMPT:-Hello from the switchyard smoke test}"
TIMEOUT="${SMOKE_TIMEOUT:-300}"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

command -v curl >/dev/null || fail "curl is not installed"
command -v python3 >/dev/null || fail "python3 is not installed (used to read JSON)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

AUTH=()
if [[ -n "${SWITCHYARD_KEY:-}" ]]; then
    AUTH=(-H "Authorization: Bearer ${SWITCHYARD_KEY}")
fi

# call METHOD PATH [JSON_BODY]: writes the body to $WORK/body, fails unless 200.
call() {
    local method="$1" path="$2" status
    local args=(-sS -N -X "$method" --max-time "$TIMEOUT" -o "$WORK/body" -w '%{http_code}')
    if [[ $# -ge 3 ]]; then
        args+=(-H "Content-Type: application/json" --data-binary "$3")
    fi
    if ! status="$(curl "${args[@]}" ${AUTH[@]+"${AUTH[@]}"} "$BASE$path")"; then
        fail "$method $path: no answer from $BASE (is switchyard running? set SWITCHYARD_URL)"
    fi
    if [[ "$status" != "200" ]]; then
        echo "--- response body:" >&2
        cat "$WORK/body" >&2 || true
        echo >&2
        case "$status" in
            401) fail "$method $path: HTTP 401, set SWITCHYARD_KEY to a key from the keys file" ;;
            *) fail "$method $path: HTTP $status" ;;
        esac
    fi
}
