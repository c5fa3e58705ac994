#!/usr/bin/env bash
# The status page in a real browser: headless Chromium (Debian's `chromium`)
# driven by playwright-core (pinned in package.json, no browser download).
# Installs what is missing (chromium, npm, node_modules), starts
# `luxtensor-node devnet` on free ports, runs status.test.mjs (about 30 s)
# and always stops the devnet.
# Usage: tests/browser/run.sh [path/to/luxtensor-node]   (default: target/debug/luxtensor-node)
# Screenshots go to target/browser-screenshots; SCREENSHOTS=docs/screenshots
# refreshes the committed ones (those the README shows; SETTLE_MS=40000 lets
# the charts fill first).
# With a proxy: PROXY_STATUS=http://127.0.0.1:9002 STOP_UPSTREAM_PID=PID also
# checks the proxy's page and that a stopped upstream shows as down.
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${1:-target/debug/luxtensor-node}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
SCREENSHOTS="${SCREENSHOTS:-target/browser-screenshots}"
if [ ! -x "$CHROMIUM" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT="$(free_port)"; WS_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
"$NODE" devnet --validators 4 --data-dir "$WORK/devnet" \
  --http-addr "127.0.0.1:$HTTP_PORT" --ws-addr "127.0.0.1:$WS_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  > "$WORK/devnet.out" 2>&1 &
DEVNET=$!
cleanup() {
  kill -INT "$DEVNET" 2>/dev/null || true
  wait "$DEVNET" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Wait (bounded, 30 s) for the first block on node 0's status page.
for _ in $(seq 1 150); do
  if curl -s "http://127.0.0.1:$METRICS_PORT/status.json" | grep -q '"head":{"number":[1-9]'; then
    break
  fi
  sleep 0.2
done
# Node 0 is the devnet's child whose data directory is node-0; the test kills it at the end.
NODE0_PID="$(ps -o pid=,args= --ppid "$DEVNET" | awk '/\/node-0( |$)/ {print $1; exit}')"
if [ -z "$NODE0_PID" ]; then
  echo "node 0 did not start; devnet output follows"; cat "$WORK/devnet.out"; exit 1
fi
EXTRA=(--settle-ms "${SETTLE_MS:-3000}")
if [ -n "${PROXY_STATUS:-}" ]; then EXTRA+=(--proxy "$PROXY_STATUS"); fi
if [ -n "${STOP_UPSTREAM_PID:-}" ]; then EXTRA+=(--stop-upstream-pid "$STOP_UPSTREAM_PID"); fi
if ! timeout 120 node tests/browser/status.test.mjs --node "http://127.0.0.1:$METRICS_PORT" \
    --node0-pid "$NODE0_PID" --screenshots "$SCREENSHOTS" "${EXTRA[@]}"; then
  echo "browser test failed; devnet output and node 0's log follow"
  cat "$WORK/devnet.out"; tail -n 50 "$WORK/devnet/node-0/node.log"
  exit 1
fi
