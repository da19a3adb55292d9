#!/usr/bin/env bash
# Installs (if missing) and starts Debian's PostgreSQL on 127.0.0.1, creates the
# role and an empty database for a Prefect server, and prints its connection URL.
# Idempotent; needs root (as CI and these machines have). Usage:
#   tests/services/postgres.sh [DATABASE]      (default: nbjobs_test, recreated empty)
#   tests/services/postgres.sh stop            (stops the cluster it started)
set -euo pipefail
if [ "${1:-}" = stop ]; then
  version="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)"
  [ -z "$version" ] || pg_ctlcluster "$version" main stop 2>/dev/null || true
  exit 0
fi
db="${1:-nbjobs_test}"
role="nbjobs"
password="nbjobs-test-only"

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "postgres.sh: installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
fi
version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^${version} main$"; then
  pg_createcluster "$version" main >&2
fi
# listen on loopback only
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/${version}/main/postgresql.conf"
if ! pg_lsclusters -h | awk '$1=="'"$version"'" && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main start >&2
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
port="$(pg_lsclusters -h | awk '$1=="'"$version"'" && $2=="main" {print $3}')"
su postgres -c "psql -qAt" >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${role}') THEN
    CREATE ROLE ${role} LOGIN PASSWORD '${password}';
  END IF;
END \$\$;
SQL
su postgres -c "dropdb --if-exists --force ${db} && createdb -O ${role} ${db}" >&2
echo "postgresql+asyncpg://${role}:${password}@127.0.0.1:${port}/${db}"
