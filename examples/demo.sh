#!/usr/bin/env bash
# The demo: starts the calc service with farine.ini.example, calls it, stops it.
#
# It runs in a RabbitMQ virtual host of its own (made here, deleted at the end), so another
# `calc` on the same broker can neither answer for it nor be disturbed by it; it waits for its
# own service to be ready, and stops it even when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
FARINE_NEEDS_POSTGRES=0 bash .ci/services

fail() { echo "demo: $*" >&2; exit 1; }

vhost="farine-demo-$$"
service=""
log=$(mktemp)
cleanup() {
  if [ -n "$service" ] && kill -0 "$service" 2>/dev/null; then
    kill -TERM "$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
  fi
  rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rabbitmqctl add_vhost "$vhost" >/dev/null 2>&1 &&
  rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null 2>&1 ||
  fail "cannot create the demo's RabbitMQ virtual host with rabbitmqctl (run the demo as root, or as a user allowed to run rabbitmqctl)"
export AMQP_URI="amqp://guest:guest@127.0.0.1:5672/$vhost"
export FARINE_INI="$PWD/farine.ini.example"

# Built once each, exactly as `farine --start` builds calc (building both in one cargo call
# would unify their features and make `farine --start` compile calc again).
echo "== building farine and calc"
cargo build -q -p farine-cli
cargo build -q -p calc --bins
farine=target/debug/farine

echo "== farine --start calc"
$farine --start calc >"$log" 2>&1 &
service=$!
# Ready: in this virtual host only this process can answer.
ready=0
for _ in $(seq 1 150); do
  kill -0 "$service" 2>/dev/null || { cat "$log" >&2; fail "calc exited before it was ready (its log is above)"; }
  if $farine call calc.add '[0, 0]' --timeout 1s >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { tail -n 20 "$log" >&2; fail "calc did not become ready within 30 s (the end of its log is above)"; }

echo "== farine call calc.add '[2, 3]'"
$farine call calc.add '[2, 3]'
echo "== farine call calc.count '[5]'"
$farine call calc.count '[5]'
echo "== farine call calc.add '[\"two\", 3]'   (an error, exits non-zero)"
$farine call calc.add '["two", 3]' || true
echo "== stopping calc (SIGTERM)"
kill -TERM "$service"
wait "$service" && echo "calc stopped cleanly" || fail "calc did not stop cleanly (exit $?)"
service=""
