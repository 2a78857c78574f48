#!/usr/bin/env bash
# Start a local PostgreSQL (Debian's package) for the tests of the task database's PostgreSQL path and print
# its URL: export DREAMLAB_TEST_POSTGRES_URL=$(bash scripts/start_test_postgres.sh). Prints nothing (and the
# tests skip, saying why) where PostgreSQL cannot be installed or started.
set -uo pipefail
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
AS_PG=$([ "$(id -u)" = 0 ] && echo "runuser -u postgres --" || echo "sudo -u postgres")
if ! command -v pg_lsclusters >/dev/null; then
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends postgresql; } >&2 || exit 0
fi
read -r version cluster port _ < <(pg_lsclusters --no-header | head -n 1)
[ -n "${version:-}" ] || exit 0
$SUDO pg_ctlcluster "$version" "$cluster" start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
  $AS_PG psql -p "$port" -qAtc 'select 1' >/dev/null 2>&1 && break
  sleep 1
done
$AS_PG psql -p "$port" -qAtc "select 1 from pg_roles where rolname='dreamlab'" | grep -q 1 \
  || $AS_PG psql -p "$port" -qc "create role dreamlab login password 'dreamlab'" >&2 || exit 0
$AS_PG psql -p "$port" -qAtc "select 1 from pg_database where datname='dreamlab_test'" | grep -q 1 \
  || $AS_PG psql -p "$port" -qc "create database dreamlab_test owner dreamlab" >&2 || exit 0
echo "postgresql://dreamlab:dreamlab@127.0.0.1:$port/dreamlab_test"
