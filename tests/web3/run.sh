#!/usr/bin/env bash
# The real-client test: web3.py against a devnet of luxtensor-node processes.
# Creates a virtual environment with web3 (PyPI), starts `luxtensor-node devnet`
# on free ports, runs test_devnet.py, and always stops the devnet.
# Usage: tests/web3/run.sh [path/to/luxtensor-node]   (default: target/debug/luxtensor-node)
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE="${1:-target/debug/luxtensor-node}"
VENV="${LUXTENSOR_WEB3_VENV:-target/web3-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "web3>=7,<9"
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
# Wait (bounded) for the first finalized block.
for _ in $(seq 1 150); do
  if curl -s -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}' "http://127.0.0.1:$HTTP_PORT" \
      | grep -q '"result":"0x[1-9a-f]'; then
    break
  fi
  sleep 0.2
done
KEYGEN="$("$NODE" keygen --out "$WORK/new-validator.key")"
BLS_KEY="$(echo "$KEYGEN" | awk '/bls public key/ {print $4}')"
POP="$(echo "$KEYGEN" | awk '/proof of possession/ {print $4}')"
if ! "$VENV/bin/python" tests/web3/test_devnet.py "http://127.0.0.1:$HTTP_PORT" "ws://127.0.0.1:$WS_PORT" "$BLS_KEY" "$POP"; then
  echo "web3.py test failed; devnet output and node 0's log follow"
  cat "$WORK/devnet.out"; tail -n 50 "$WORK/devnet/node-0/node.log"
  exit 1
fi
