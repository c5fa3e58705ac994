#!/usr/bin/env bash
# The real-client test: web3.py against a devnet of luxtensor-node processes,
# then again through luxtensor-proxy in front of that devnet.
# Creates a virtual environment with web3 (PyPI), starts `luxtensor-node devnet`
# on free ports, runs test_devnet.py against node 0, starts
# `luxtensor-proxy --upstream ws://node0 --upstream ws://node1` (strict mode,
# HTTP and WebSocket on one address), runs test_devnet.py against the proxy
# (a second staking key), and always stops both.
# Usage: tests/web3/run.sh [luxtensor-node] [luxtensor-proxy]
#   (default: target/debug/luxtensor-node, the luxtensor-proxy beside it)
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${1:-target/debug/luxtensor-node}"
PROXY="${2:-$(dirname "$NODE")/luxtensor-proxy}"
if [ ! -x "$PROXY" ]; then
  cargo build -q -p luxtensor-proxy --bin luxtensor-proxy
  PROXY=target/debug/luxtensor-proxy
fi
VENV="${LUXTENSOR_WEB3_VENV:-target/web3-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "web3>=7,<9"
fi
WORK="$(mktemp -d)"
source tests/free_port.sh
HTTP_PORT="$(free_port)"; WS_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
"$NODE" devnet --validators 4 --data-dir "$WORK/devnet" \
  --http-addr "127.0.0.1:$HTTP_PORT" --ws-addr "127.0.0.1:$WS_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  > "$WORK/devnet.out" 2>&1 &
DEVNET=$!
PROXY_PID=""
cleanup() {
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
  kill -INT "$DEVNET" 2>/dev/null || true
  wait "$DEVNET" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Waits (at most 60 s) until the JSON-RPC server at $1 reports a block
# above genesis; otherwise prints $2 and the log $3, and fails.
wait_for_block() {
  for _ in $(seq 1 300); do
    if curl -s -X POST -H 'content-type: application/json' \
        --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}' "$1" \
        | grep -q '"result":"0x[1-9a-f]'; then
      return 0
    fi
    sleep 0.2
  done
  echo "no block above genesis from $2 after 60 s; its log follows"
  tail -n 60 "$3"
  exit 1
}
wait_for_block "http://127.0.0.1:$HTTP_PORT" "node 0" "$WORK/devnet.out"
stake_key() { # prints "BLS_KEY POP" of a fresh validator key
  local out
  out="$("$NODE" keygen --out "$1")"
  echo "$(echo "$out" | awk '/bls public key/ {print $4}') $(echo "$out" | awk '/proof of possession/ {print $4}')"
}
read -r BLS_KEY POP <<< "$(stake_key "$WORK/new-validator.key")"
echo "== web3.py against node 0"
if ! "$VENV/bin/python" tests/web3/test_devnet.py "http://127.0.0.1:$HTTP_PORT" "ws://127.0.0.1:$WS_PORT" "$BLS_KEY" "$POP"; then
  echo "web3.py test failed; devnet output and node 0's log follow"
  cat "$WORK/devnet.out"; tail -n 50 "$WORK/devnet/node-0/node.log"
  exit 1
fi

echo "== web3.py through luxtensor-proxy (strict) in front of nodes 0 and 1"
NODE1_WS="$(awk '/^node 1:/ {for (i = 1; i <= NF; i++) if ($i ~ /^ws:\/\//) print $i}' "$WORK/devnet.out")"
P_PORT="$(free_port)"; P_METRICS="$(free_port)"
"$PROXY" --upstream "ws://127.0.0.1:$WS_PORT" --upstream "$NODE1_WS" --chain "$WORK/devnet/chain.json" \
  --listen "127.0.0.1:$P_PORT" --metrics "127.0.0.1:$P_METRICS" > "$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
wait_for_block "http://127.0.0.1:$P_PORT" "the proxy (verified heads)" "$WORK/proxy.log"
# The proxy answers lux_stakingContract itself (a protocol constant): it must equal the node's.
CONTRACT='{"jsonrpc":"2.0","id":1,"method":"lux_stakingContract"}'
FROM_NODE="$(curl -s -X POST -H 'content-type: application/json' --data "$CONTRACT" "http://127.0.0.1:$HTTP_PORT")"
FROM_PROXY="$(curl -s -X POST -H 'content-type: application/json' --data "$CONTRACT" "http://127.0.0.1:$P_PORT")"
if [ "$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["result"] == json.loads(sys.argv[2])["result"])' "$FROM_NODE" "$FROM_PROXY")" != True ]; then
  echo "lux_stakingContract differs: node $FROM_NODE proxy $FROM_PROXY"; exit 1
fi
echo "ok: lux_stakingContract through the proxy equals the node's"
read -r BLS_KEY POP <<< "$(stake_key "$WORK/new-validator-2.key")"
# Another staker (devnet account 6): account 5 staked in the first run.
STAKER2=0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e
if ! "$VENV/bin/python" tests/web3/test_devnet.py "http://127.0.0.1:$P_PORT" "ws://127.0.0.1:$P_PORT" "$BLS_KEY" "$POP" "$STAKER2"; then
  echo "web3.py through the proxy failed; the proxy's log follows"
  tail -n 60 "$WORK/proxy.log"
  exit 1
fi
