#!/usr/bin/env bash
# The status page in a real browser: headless Chromium (Debian's `chromium`)
# driven by playwright-core (pinned in package.json, no browser download).
# Installs what is missing (chromium, npm, node_modules), starts
# `luxtensor-node devnet` on free ports, runs status.test.mjs (about 30 s)
# and always stops the devnet.
# Screenshots go to target/browser-screenshots; SCREENSHOTS=docs/screenshots
# refreshes the committed ones (those the README shows; SETTLE_MS=40000 lets
# the charts fill first).
# It also starts a non-validating `luxtensor-node run` follower of that devnet
# and `luxtensor-proxy` in front of node 0 and the follower, and checks the
# proxy's page (head advancing, the 4 validators, the follower shown as down
# once the test kills it). PROXY_STATUS=URL STOP_UPSTREAM_PID=PID instead
# points the test at a proxy started by hand (NO_PROXY_START=1 skips ours).
# Usage: tests/browser/run.sh [luxtensor-node] [luxtensor-proxy]
#   (default: target/debug/luxtensor-node, the luxtensor-proxy beside it)
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${1:-target/debug/luxtensor-node}"
PROXY="${2:-$(dirname "$NODE")/luxtensor-proxy}"
if [ -z "${NO_PROXY_START:-}" ] && [ ! -x "$PROXY" ]; then
  cargo build -q -p luxtensor-proxy --bin luxtensor-proxy
  PROXY=target/debug/luxtensor-proxy
fi
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
source tests/free_port.sh
HTTP_PORT="$(free_port)"; WS_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
"$NODE" devnet --validators 4 --data-dir "$WORK/devnet" \
  --http-addr "127.0.0.1:$HTTP_PORT" --ws-addr "127.0.0.1:$WS_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  > "$WORK/devnet.out" 2>&1 &
DEVNET=$!
FOLLOWER=""; PROXY_PID=""
cleanup() {
  for pid in $PROXY_PID $FOLLOWER; do kill "$pid" 2>/dev/null || true; done
  kill -INT "$DEVNET" 2>/dev/null || true
  for pid in $PROXY_PID $FOLLOWER "$DEVNET"; do wait "$pid" 2>/dev/null || true; done
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
# The proxy: in front of node 0 and a non-validating follower the test kills
# (the devnet stops every node when one of its children dies, so the upstream
# to stop is a node of its own).
if [ -z "${NO_PROXY_START:-}" ] && [ -z "${PROXY_STATUS:-}" ]; then
  BOOT="$(awk '/^node 0:/ {for (i = 1; i < NF; i++) if ($i == "p2p") print $(i + 1)}' "$WORK/devnet.out")"
  F_HTTP="$(free_port)"; F_WS="$(free_port)"; F_METRICS="$(free_port)"; F_P2P="$(free_port)"
  "$NODE" run --data-dir "$WORK/follower" --chain "$WORK/devnet/chain.json" \
    --p2p-addr "/ip4/127.0.0.1/tcp/$F_P2P" --bootnode "$BOOT" \
    --http-addr "127.0.0.1:$F_HTTP" --ws-addr "127.0.0.1:$F_WS" --metrics-addr "127.0.0.1:$F_METRICS" \
    > "$WORK/follower.log" 2>&1 &
  FOLLOWER=$!
  P_RPC="$(free_port)"; P_METRICS="$(free_port)"
  "$PROXY" --upstream "ws://127.0.0.1:$WS_PORT" --upstream "ws://127.0.0.1:$F_WS" \
    --chain "$WORK/devnet/chain.json" --listen "127.0.0.1:$P_RPC" --metrics "127.0.0.1:$P_METRICS" \
    > "$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!
  # Bounded (30 s): a verified head on the proxy's page and the follower caught up.
  for _ in $(seq 1 150); do
    if curl -s "http://127.0.0.1:$P_METRICS/status.json" | grep -q '"head":{"number":[1-9]' &&
       curl -s "http://127.0.0.1:$F_METRICS/status.json" | grep -q '"head":{"number":[1-9]'; then
      break
    fi
    sleep 0.2
  done
  EXTRA+=(--proxy "http://127.0.0.1:$P_METRICS" --stop-upstream-pid "$FOLLOWER" --stop-upstream-name "ws://127.0.0.1:$F_WS")
fi
if [ -n "${PROXY_STATUS:-}" ]; then EXTRA+=(--proxy "$PROXY_STATUS"); fi
if [ -n "${STOP_UPSTREAM_PID:-}" ]; then EXTRA+=(--stop-upstream-pid "$STOP_UPSTREAM_PID"); fi
if ! timeout 120 node tests/browser/status.test.mjs --node "http://127.0.0.1:$METRICS_PORT" \
    --node0-pid "$NODE0_PID" --screenshots "$SCREENSHOTS" "${EXTRA[@]}"; then
  echo "browser test failed; devnet output and node 0's log follow"
  cat "$WORK/devnet.out"; tail -n 50 "$WORK/devnet/node-0/node.log"
  if [ -n "$PROXY_PID" ]; then
    echo "--- proxy log"; tail -n 30 "$WORK/proxy.log"; echo "--- follower log"; tail -n 20 "$WORK/follower.log"
  fi
  exit 1
fi
