#!/usr/bin/env bash
# Runs the Python client example against a freshly started oneirod (built here) on a
# loopback port, with its own state directory and a bearer token. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${ONEIRO_PY_VENV:-/tmp/oneiro-py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools
cargo build -q -p oneiro-daemon --bin oneirod
state=$(mktemp -d)
log="$state/oneirod.log"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$token" >"$state/token"
RUST_LOG=info target/debug/oneirod --listen 127.0.0.1:0 --state-dir "$state" --device cpu \
  --token-file "$state/token" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$state"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(grep -o 'addr=[0-9.:]*' "$log" | head -n1 | cut -d= -f2 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$log"; echo "oneirod did not start"; exit 1; }
"$venv/bin/python" examples/python/oneiro_example.py "$addr" "$token"
