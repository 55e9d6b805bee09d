#!/usr/bin/env bash
# Runs the WebSocket conformance tests: Python websockets, then Node ws.
# Needs ws_echo_server and ws_client in $CULVERT_BUILD (default build/), and
# tests/node_modules (scripts/setup runs npm ci there). Exits non-zero if
# either suite fails.
set -u
cd "$(dirname "$0")/../.."
export CULVERT_BUILD="${CULVERT_BUILD:-build}"
for t in ws_echo_server ws_client; do
  if [ ! -x "$CULVERT_BUILD/$t" ]; then
    echo "run.sh: $CULVERT_BUILD/$t missing (cmake --build $CULVERT_BUILD --target $t)" >&2
    exit 2
  fi
done
if [ ! -d tests/node_modules/ws ]; then
  echo "run.sh: tests/node_modules/ws missing (run scripts/setup or: cd tests && npm ci)" >&2
  exit 2
fi

rc=0
echo "== Python websockets =="
timeout 900 /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/conformance || rc=1
echo "== Node ws =="
timeout 600 node --test tests/conformance/test_ws_node.mjs || rc=1
exit $rc
