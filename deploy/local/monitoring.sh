#!/usr/bin/env bash
# Prometheus and Alertmanager from Debian's packages, on loopback, with the project's configs.
#   monitoring.sh start | stop | status | env
# Data under $MF_RUN_DIR/prometheus and $MF_RUN_DIR/alertmanager, pid files beside them, logs in
# $MF_LOG_DIR. PROMETHEUS_PORT (9090) and ALERTMANAGER_PORT (9093) move them. Prometheus scrapes the
# services at the ports of `make run` (deploy/prometheus/prometheus.yml) and loads the alert rules.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
. "$HERE/env.sh"
MONITORING_HOST=${MONITORING_HOST:-127.0.0.1}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
ALERTMANAGER_PORT=${ALERTMANAGER_PORT:-9093}
MONITORING_START_TIMEOUT_S=${MONITORING_START_TIMEOUT_S:-60}
PROM_DIR=$MF_RUN_DIR/prometheus
AM_DIR=$MF_RUN_DIR/alertmanager
PROM_PID=$MF_RUN_DIR/prometheus.pid
AM_PID=$MF_RUN_DIR/alertmanager.pid
PROM_LOG=$MF_LOG_DIR/prometheus.log
AM_LOG=$MF_LOG_DIR/alertmanager.log
PROM_URL=http://$MONITORING_HOST:$PROMETHEUS_PORT
AM_URL=http://$MONITORING_HOST:$ALERTMANAGER_PORT

alertmanager_bin() { command -v prometheus-alertmanager || command -v alertmanager || true; }

# The project's config with this run's Alertmanager address and the rules by absolute path.
render_config() {
  mkdir -p "$PROM_DIR/data" "$AM_DIR/data"
  sed -e "s#\"127.0.0.1:9093\"#\"$MONITORING_HOST:$ALERTMANAGER_PORT\"#" \
      -e "s#- rules/\*.yml#- $MF_ROOT/deploy/prometheus/rules/*.yml#" \
      "$MF_ROOT/deploy/prometheus/prometheus.yml" > "$PROM_DIR/prometheus.yml"
  promtool check config "$PROM_DIR/prometheus.yml" >/dev/null
}

# http_ready HOST PORT: true when GET /-/ready answers 200 (plain bash: curl is not on every machine).
http_ready() {
  (
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'GET /-/ready HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&3
    read -r -t 2 _ status _ <&3 || exit 1
    [ "$status" = 200 ]
  ) 2>/dev/null
}

# wait_ready NAME HOST PORT PIDFILE: until /-/ready answers 200, the process exits or the deadline passes.
wait_ready() {
  local name=$1 host=$2 port=$3 pidfile=$4 deadline=$(( $(date +%s) + MONITORING_START_TIMEOUT_S ))
  until http_ready "$host" "$port"; do
    if ! pid_alive "$pidfile"; then mf_log "$name exited during start-up; see its log"; return 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then mf_log "$name not ready within ${MONITORING_START_TIMEOUT_S}s"; return 1; fi
    sleep 0.2
  done
}

# start_one NAME PIDFILE PORT LOG URL COMMAND...: start in the background unless running; wait until ready.
start_one() {
  local name=$1 pidfile=$2 port=$3 log=$4 url=$5; shift 5
  if pid_alive "$pidfile"; then mf_log "$name already running (pid $(cat "$pidfile")): $url"; return 0; fi
  if (exec 3<>"/dev/tcp/$MONITORING_HOST/$port") 2>/dev/null; then
    mf_log "port $MONITORING_HOST:$port is taken by a process this stack did not start; set ${name^^}_PORT"; exit 1
  fi
  mf_log "starting $name on $MONITORING_HOST:$port (log $log)"
  nohup "$@" >>"$log" 2>&1 </dev/null &
  echo $! > "$pidfile"
  if ! wait_ready "$name" "$MONITORING_HOST" "$port" "$pidfile"; then
    tail -20 "$log" >&2; stop_pid "$pidfile" "$name"; exit 1
  fi
  mf_log "$name ready: $url"
}

start() {
  command -v prometheus >/dev/null || { mf_log "prometheus missing: run deploy/local/tools.sh"; exit 1; }
  local am; am=$(alertmanager_bin)
  [ -n "$am" ] || { mf_log "prometheus-alertmanager missing: run deploy/local/tools.sh"; exit 1; }
  render_config
  start_one alertmanager "$AM_PID" "$ALERTMANAGER_PORT" "$AM_LOG" "$AM_URL" \
    "$am" --config.file="$MF_ROOT/deploy/alertmanager/alertmanager.yml" --storage.path="$AM_DIR/data" \
    --web.listen-address="$MONITORING_HOST:$ALERTMANAGER_PORT" --cluster.listen-address=
  start_one prometheus "$PROM_PID" "$PROMETHEUS_PORT" "$PROM_LOG" "$PROM_URL" \
    prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
    --storage.tsdb.retention.time=2d --web.listen-address="$MONITORING_HOST:$PROMETHEUS_PORT"
  echo "Prometheus   $PROM_URL   (alerts: $PROM_URL/alerts, targets: $PROM_URL/targets)"
  echo "Alertmanager $AM_URL"
}

stop() {
  stop_pid "$PROM_PID" prometheus
  stop_pid "$AM_PID" alertmanager
}

status() {
  local rc=0
  if pid_alive "$PROM_PID"; then echo "prometheus running pid $(cat "$PROM_PID") $PROM_URL"; else echo "prometheus stopped"; rc=1; fi
  if pid_alive "$AM_PID"; then echo "alertmanager running pid $(cat "$AM_PID") $AM_URL"; else echo "alertmanager stopped"; rc=1; fi
  return $rc
}

env_out() {
  echo "MF_PROMETHEUS_URL=$PROM_URL"
  echo "MF_ALERTMANAGER_URL=$AM_URL"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_out ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
