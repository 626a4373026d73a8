#!/usr/bin/env bash
# Start the machine's own Postgres and Redis if they are installed but stopped. The tests use the
# machine's Postgres when it answers on 127.0.0.1:5432 and otherwise start the embedded one
# (`mediagen.embedded`), and they run a redis-server of their own either way: a service that
# stays unreachable is reported, not fatal.
set -u
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for _ in $(seq 1 50); do
  if pg_up && redis_up; then exit 0; fi
  sleep 0.2
done
pg_up || echo "ensure-services: PostgreSQL is not reachable on 127.0.0.1:5432;" \
  "the tests will use the embedded one" >&2
redis_up || echo "ensure-services: Redis is not reachable on 127.0.0.1:6379" >&2
exit 0
