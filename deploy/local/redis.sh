#!/usr/bin/env bash
# Redis from Debian's redis-server, on loopback, in-memory only (marginflow rebuilds it from Kafka).
#   redis.sh install | start | stop | status
# REDIS_ACL_FILE (pki.sh's redis.acl): ACL users instead of the open default user; the readiness
# ping then logs in as `admin` with the password in REDIS_ADMIN_PASSWORD_FILE.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIDFILE=$MF_RUN_DIR/redis.pid
LOG=$MF_LOG_DIR/redis.log

install() {
  command -v redis-server >/dev/null && return 0
  mf_log "redis-server missing: installing Debian's package"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}

start() {
  if pid_alive "$PIDFILE"; then mf_log "redis already running (pid $(cat "$PIDFILE")) on $REDIS_HOST:$REDIS_PORT"; return 0; fi
  if (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT") 2>/dev/null; then
    mf_log "port $REDIS_HOST:$REDIS_PORT is taken by a process this stack did not start; set REDIS_PORT or REDIS_URL"; exit 1
  fi
  install
  local acl=() auth=()
  if [ "${REDIS_ACL:-0}" = 1 ] && [ -z "${REDIS_ACL_FILE:-}" ]; then   # pki.sh's users (make run REDIS_ACL=1)
    REDIS_ACL_FILE=${PKI_DIR:-$MF_RUN_DIR/pki}/redis.acl
    REDIS_ADMIN_PASSWORD_FILE=${PKI_DIR:-$MF_RUN_DIR/pki}/redis-pass.admin
  fi
  if [ -n "${REDIS_ACL_FILE:-}" ]; then
    acl=(--aclfile "$REDIS_ACL_FILE")
    auth=(--user admin --pass "$(cat "${REDIS_ADMIN_PASSWORD_FILE:?REDIS_ADMIN_PASSWORD_FILE is needed with REDIS_ACL_FILE}")" --no-auth-warning)
  fi
  mf_log "starting redis on $REDIS_HOST:$REDIS_PORT (log $LOG)${REDIS_ACL_FILE:+ with ACL users from $REDIS_ACL_FILE}"
  # No RDB/AOF on purpose: Kafka holds the truth, Redis is the cache (DESIGN.md).
  redis-server --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$LOG" --dir "$MF_RUN_DIR" \
    --maxmemory-policy noeviction "${acl[@]}"
  local deadline=$(( $(date +%s) + REDIS_START_TIMEOUT_S ))
  until redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "${auth[@]}" ping 2>/dev/null | grep -q PONG; do
    [ "$(date +%s)" -lt "$deadline" ] || { mf_log "redis not ready within ${REDIS_START_TIMEOUT_S}s"; tail -20 "$LOG" >&2; exit 1; }
    sleep 0.1
  done
  mf_log "redis ready"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" redis ;;
  status) if pid_alive "$PIDFILE"; then echo "redis running pid $(cat "$PIDFILE") $REDIS_HOST:$REDIS_PORT"; else echo "redis stopped"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
