#!/usr/bin/env bash
# Property-based API fuzzing with schemathesis, every phase (examples,
# coverage, fuzzing, stateful: chains of calls that follow the spec's links),
# on openapi.yaml as written, against a real gateway on SQLite. The checks:
# no server errors, status codes, content types, headers and bodies as the
# spec declares them. Usage: tests/fuzz/schemathesis.sh THINHOOK_BINARY
set -euo pipefail
binary=$(realpath "$1")
spec=$(realpath "$(dirname "$0")/../../openapi.yaml")
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export THINHOOK_LISTEN="127.0.0.1:$port" THINHOOK_LOG_LEVEL=warn \
    THINHOOK_DELIVERY_ALLOW_CIDRS=127.0.0.0/8 \
    THINHOOK_LIMITS_API_BURST=1000000 THINHOOK_LIMITS_TOKEN_BURST=1000000
cd "$work"
"$binary" migrate >/dev/null 2>&1
created=$("$binary" clients create --name fuzz 2>/dev/null)
client_id=$(awk '/client_id/ {print $2}' <<<"$created")
client_secret=$(awk '/client_secret/ {print $2}' <<<"$created")
"$binary" serve >"$work/serve.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null; wait "$gateway" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
token=$(curl -sf -u "$client_id:$client_secret" -d grant_type=client_credentials \
    "http://127.0.0.1:$port/oauth/token" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
# One worker and a fixed seed: the same cases on every run, bounded in count.
st run "$spec" --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples 30 --workers 1 --seed 1 --no-color
if grep -q ' ERROR thinhook' "$work/serve.log"; then
    echo "thinhook logged errors while fuzzed:" >&2
    grep ' ERROR thinhook' "$work/serve.log" >&2
    exit 1
fi
