#!/usr/bin/env bash
# Apache Kafka 4.x, one node in KRaft mode (broker + controller), on loopback.
#   kafka.sh fetch | start | stop | status
# The broker jars come from Maven Central through deploy/kafka/pom.xml and are cached in
# $MF_CACHE_DIR, outside the repository. Storage is formatted on first start.
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

write_config() {
  mkdir -p "$CONF_DIR" "$KAFKA_DATA_DIR"
  cat > "$CONF_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
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
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$CONF_DIR/server.properties" --ignore-formatted >> "$LOG" 2>&1
  fi
  mf_log "starting kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (data $KAFKA_DATA_DIR, log $LOG)"
  nohup "${JAVA[@]}" kafka.Kafka "$CONF_DIR/server.properties" >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  wait_port "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_START_TIMEOUT_S" kafka "$PIDFILE" || { tail -20 "$LOG" >&2; stop_pid "$PIDFILE" kafka; exit 1; }
  mf_log "kafka ready"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" kafka ;;
  status) if pid_alive "$PIDFILE"; then echo "kafka running pid $(cat "$PIDFILE") $KAFKA_HOST:$KAFKA_PORT"; else echo "kafka stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
