#!/usr/bin/env bash
# The local infrastructure marginflow runs on: Kafka and Redis, started by the project
# (Prometheus and Alertmanager: monitoring.sh, started by `make run`, stopped here too).
#   stack.sh up | down | status | env
# With KAFKA_BOOTSTRAP_SERVERS or REDIS_URL set, that part is external and not started here.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
. "$HERE/env.sh"

up() {
  if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then "$HERE/kafka.sh" start; else mf_log "using external kafka $KAFKA_BOOTSTRAP_SERVERS"; fi
  if [ -z "${REDIS_URL:-}" ]; then "$HERE/redis.sh" start; else mf_log "using external redis $REDIS_URL"; fi
}
down() {
  # The platform's supervisor first (it stops every service it started), then the infrastructure.
  stop_pid "$MF_RUN_DIR/supervisor.pid" supervisor
  # Anything a killed supervisor left behind, by the pid files it wrote.
  local f
  for f in "$MF_RUN_DIR"/services/*.pid; do [ -e "$f" ] && stop_pid "$f" "$(basename "$f" .pid)"; done
  "$HERE/monitoring.sh" stop
  "$HERE/redis.sh" stop
  "$HERE/kafka.sh" stop
}
status() {
  local rc=0
  "$HERE/kafka.sh" status || rc=1
  "$HERE/redis.sh" status || rc=1
  "$HERE/monitoring.sh" status || true
  if pid_alive "$MF_RUN_DIR/supervisor.pid"; then echo "supervisor running pid $(cat "$MF_RUN_DIR/supervisor.pid")"; else echo "supervisor stopped"; fi
  return $rc
}
# The addresses the services and tests should use, as shell assignments.
env_out() {
  echo "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_HOST:$KAFKA_PORT}"
  echo "REDIS_URL=${REDIS_URL:-redis://$REDIS_HOST:$REDIS_PORT/0}"
}
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_out ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
