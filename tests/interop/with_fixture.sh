#!/usr/bin/env bash
# Starts a server that prints "PORT <n>" (the RPC fixture), runs a command with
# every "{ADDR}" in its arguments replaced by 127.0.0.1:<n>, then stops the
# server with SIGTERM. Fails when the command fails, when the server prints no
# port within 30 s, or when it does not exit 0 within 20 s of SIGTERM.
#   with_fixture.sh SERVER [SERVER_ARGS...] -- COMMAND [ARGS...]
set -u
server=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do server+=("$1"); shift; done
[ $# -gt 0 ] || { echo "usage: $0 SERVER [ARGS...] -- COMMAND [ARGS...]" >&2; exit 2; }
shift

out=$(mktemp)
trap 'rm -f "$out"' EXIT
"${server[@]}" >"$out" &
pid=$!
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/^PORT \([0-9][0-9]*\)$/\1/p' "$out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "with_fixture: ${server[0]} printed no port" >&2
  kill -KILL "$pid" 2>/dev/null
  exit 1
fi

cmd=()
for a in "$@"; do cmd+=("${a//\{ADDR\}/127.0.0.1:$port}"); done
"${cmd[@]}"
rc=$?

kill -TERM "$pid"
for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  echo "with_fixture: server did not exit within 20 s of SIGTERM" >&2
  kill -KILL "$pid"
  rc=1
fi
wait "$pid"
src=$?
if [ "$src" -ne 0 ]; then
  echo "with_fixture: server exited with $src" >&2
  rc=1
fi
exit $rc
