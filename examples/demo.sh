#!/usr/bin/env bash
# The demo: starts the calc service with farine.ini.example, calls it, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
FARINE_NEEDS_POSTGRES=0 bash .ci/services
export FARINE_INI="$PWD/farine.ini.example"
cargo build -q -p farine-cli -p calc
farine=target/debug/farine

echo "== farine --start calc"
$farine --start calc &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null' EXIT
for _ in $(seq 1 50); do
  $farine call calc.add '[0, 0]' --timeout 1s >/dev/null 2>&1 && break
  sleep 0.2
done

echo "== farine call calc.add '[2, 3]'"
$farine call calc.add '[2, 3]'
echo "== farine call calc.count '[5]'"
$farine call calc.count '[5]'
echo "== farine call calc.add '[\"two\", 3]'   (an error, exits non-zero)"
$farine call calc.add '["two", 3]' || true
echo "== stopping calc (SIGTERM)"
