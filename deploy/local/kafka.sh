#!/usr/bin/env bash
# Apache Kafka 4.x, one node in KRaft mode (broker + controller), on loopback.
#   kafka.sh fetch | start | stop | status
# The broker jars come from Maven Central through deploy/kafka/pom.xml and are cached in
# $MF_CACHE_DIR, outside the repository. Storage is formatted on first start.
# KAFKA_SASL=1: the client listener is SASL_PLAINTEXT with SCRAM-SHA-512 users (the passwords
# pki.sh made in $PKI_DIR/kafka-pass.<user>, added when the storage is formatted), the standard
# authorizer with no access by default, and the platform's ACLs (marginflow.shared.kafka_acls:
# each service writes only its own topics) applied once the broker is up. The controller
# listener stays PLAINTEXT on loopback.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

LIBS=$MF_CACHE_DIR/kafka-$KAFKA_VERSION/libs
PIDFILE=$MF_RUN_DIR/kafka.pid
CONF_DIR=$MF_RUN_DIR/kafka-conf
LOG=$MF_LOG_DIR/kafka.log

fetch() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { mf_log "mvn (Maven) is needed to fetch the Kafka broker jars"; exit 1; }
  mf_log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f "$MF_ROOT/deploy/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS"
  ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null
  touch "$LIBS/.complete"
}

KAFKA_SASL=${KAFKA_SASL:-0}
PKI_DIR=${PKI_DIR:-$MF_RUN_DIR/pki}

write_config() {
  mkdir -p "$CONF_DIR" "$KAFKA_DATA_DIR"
  local listener=PLAINTEXT
  [ "$KAFKA_SASL" = 1 ] && listener=SASL_PLAINTEXT
  cat > "$CONF_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=$listener://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listener://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$listener
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$listener:$listener
log.dirs=$KAFKA_DATA_DIR
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
PROPS
  if [ "$KAFKA_SASL" = 1 ]; then
    chmod 600 "$CONF_DIR/server.properties"   # it holds the broker's own SCRAM password
    cat >> "$CONF_DIR/server.properties" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$PKI_DIR/kafka-pass.admin")";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# admin: the broker itself and the operator; ANONYMOUS: the controller listener (loopback only).
super.users=User:admin;User:ANONYMOUS
PROPS
  fi
  cat > "$CONF_DIR/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.server.name = org.apache.kafka.server
logger.server.level = WARN
PROPS
}

java_cmd() {
  JAVA=(java -Xms256m -Xmx"${KAFKA_HEAP_MB}"m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$CONF_DIR/log4j2.properties"
        -cp "$LIBS/*")
}

start() {
  if pid_alive "$PIDFILE"; then mf_log "kafka already running (pid $(cat "$PIDFILE")) on $KAFKA_HOST:$KAFKA_PORT"; return 0; fi
  if (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null; then
    mf_log "port $KAFKA_HOST:$KAFKA_PORT is taken by a process this stack did not start; set KAFKA_PORT or KAFKA_BOOTSTRAP_SERVERS"; exit 1
  fi
  fetch; write_config
  java_cmd
  if [ ! -f "$KAFKA_DATA_DIR/meta.properties" ]; then
    local cluster_id
    cluster_id=$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOG")
    mf_log "formatting KRaft storage in $KAFKA_DATA_DIR (cluster $cluster_id)"
    local scram=() f
    if [ "$KAFKA_SASL" = 1 ]; then
      for f in "$PKI_DIR"/kafka-pass.*; do
        scram+=(--add-scram "SCRAM-SHA-512=[name=${f##*/kafka-pass.},password=$(cat "$f")]")
      done
    fi
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$CONF_DIR/server.properties" --ignore-formatted "${scram[@]}" >> "$LOG" 2>&1
  fi
  mf_log "starting kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (data $KAFKA_DATA_DIR, log $LOG)"
  nohup "${JAVA[@]}" kafka.Kafka "$CONF_DIR/server.properties" >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_port "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_START_TIMEOUT_S" kafka "$PIDFILE" || { tail -20 "$LOG" >&2; stop_pid "$PIDFILE" kafka; exit 1; }
  if [ "$KAFKA_SASL" = 1 ]; then
    KAFKA_BOOTSTRAP_SERVERS="$KAFKA_HOST:$KAFKA_PORT" MF_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT \
      MF_KAFKA_SASL_USERNAME=admin MF_KAFKA_SASL_PASSWORD_FILE="$PKI_DIR/kafka-pass.admin" \
      "${MF_PYTHON:-$MF_ROOT/.venv/bin/python}" -m marginflow.shared.kafka_acls \
      || { mf_log "applying the ACLs failed"; stop_pid "$PIDFILE" kafka; exit 1; }
  fi
  if [ "$KAFKA_SASL" = 1 ]; then mf_log "kafka ready (SASL/SCRAM, ACLs)"; else mf_log "kafka ready"; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" kafka ;;
  status) if pid_alive "$PIDFILE"; then echo "kafka running pid $(cat "$PIDFILE") $KAFKA_HOST:$KAFKA_PORT"; else echo "kafka stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
