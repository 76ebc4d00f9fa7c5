#!/usr/bin/env bash
# System packages the platform and its tests need, from Debian's apt, installed when missing:
# redis-server (the cache), prometheus (the server `make run` starts, and promtool for the alert-rule
# and metrics tests), prometheus-alertmanager (the server and amtool), docker-compose (parses and
# checks docker-compose.yml without an engine), kcat (a Kafka CLI for people). Java 17 and Maven are
# expected on the machine.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
{ command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null; } || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v kcat >/dev/null || need+=(kcat)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
mf_log "installing with apt: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged daemons; marginflow starts its own on other ports, so stop those.
for svc in prometheus prometheus-alertmanager prometheus-node-exporter redis-server; do
  $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || $sudo service "$svc" stop >/dev/null 2>&1 || true
done
