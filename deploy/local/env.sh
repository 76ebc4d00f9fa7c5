# Shared defaults for the local stack. Sourced by kafka.sh, redis.sh and stack.sh.
# Every value can be overridden from the environment; the README's configuration table lists them.
MF_ROOT=${MF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
MF_RUN_DIR=${MF_RUN_DIR:-$MF_ROOT/.run}            # pid files, data, logs of the local stack
MF_CACHE_DIR=${MF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/marginflow}   # downloaded broker jars (outside the repo)
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_HOST=${KAFKA_HOST:-127.0.0.1}
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-19093}
KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$MF_RUN_DIR/kafka-data}
KAFKA_HEAP_MB=${KAFKA_HEAP_MB:-768}
KAFKA_START_TIMEOUT_S=${KAFKA_START_TIMEOUT_S:-120}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-16379}
REDIS_START_TIMEOUT_S=${REDIS_START_TIMEOUT_S:-30}
MF_LOG_DIR=${MF_LOG_DIR:-$MF_RUN_DIR/logs}
# When these are set by the user, the local Kafka / Redis are not started and everything points there.
# KAFKA_BOOTSTRAP_SERVERS=host:port[,host:port]   REDIS_URL=redis://host:port/0
mkdir -p "$MF_RUN_DIR" "$MF_LOG_DIR"

mf_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid FILE NAME: SIGTERM the process in FILE, wait up to 30 s, then SIGKILL; remove FILE.
stop_pid() {
  local file=$1 name=$2 pid i
  if ! pid_alive "$file"; then rm -f "$file"; return 0; fi
  pid=$(cat "$file")
  mf_log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then mf_log "$name did not stop in 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$file"
}

# wait_port HOST PORT DEADLINE_S NAME PIDFILE: wait until a TCP port accepts connections.
wait_port() {
  local host=$1 port=$2 deadline=$(( $(date +%s) + $3 )) name=$4 pidfile=$5
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    if [ -n "$pidfile" ] && ! pid_alive "$pidfile"; then mf_log "$name exited during start-up; see its log"; return 1; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then mf_log "$name not ready on $host:$port within the deadline"; return 1; fi
    sleep 0.2
  done
}
