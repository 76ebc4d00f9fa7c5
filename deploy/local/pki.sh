#!/usr/bin/env bash
# The local security material of `make run` (and of docker-compose's `pki` step), made on first use:
# a CA, a server certificate for every service name, a client certificate for mutual TLS, one
# random token per local role and the token file of their hashes. Nothing here is ever overwritten.
#   pki.sh ensure | env | client-env | rotate ROLE
# PKI_DIR (default $MF_RUN_DIR/pki) holds it; files with keys or tokens are mode 600.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PKI_DIR=${PKI_DIR:-$MF_RUN_DIR/pki}
PKI_DAYS=${PKI_DAYS:-825}
# Names a client may dial a service by: loopback for `make run`, the compose service names.
PKI_SERVER_NAMES=${PKI_SERVER_NAMES:-localhost marketdata riskparams portfolio margin liquidation exchange-sim}
ROLES="reader risk-admin service"
# Redis ACL users: each service only under its key prefix, no FLUSHALL/KEYS/CONFIG (@dangerous);
# `admin` is the operator's. Passwords in redis-pass.<user>; the ACL file holds only their hashes.
REDIS_USERS=${REDIS_USERS:-"portfolio:mf:pf: margin:mf:mg:"}
KAFKA_USERS=${KAFKA_USERS:-"marketdata riskparams portfolio margin liquidation exchange-sim demo-book"}

hash_of() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

ensure() {
  command -v openssl >/dev/null || { mf_log "openssl is needed (apt-get install openssl)"; exit 1; }
  mkdir -p "$PKI_DIR"; chmod 755 "$PKI_DIR"   # keys and tokens are 600 each; certs and the ACL file are public
  umask 077
  if [ ! -s "$PKI_DIR/ca.crt" ]; then
    mf_log "creating the local CA in $PKI_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$PKI_DAYS" \
      -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" -subj "/CN=marginflow local CA" 2>/dev/null
  fi
  if [ ! -s "$PKI_DIR/server.crt" ]; then
    local san="IP:127.0.0.1,IP:::1" n
    for n in $PKI_SERVER_NAMES; do san="$san,DNS:$n"; done
    issue server "/CN=marginflow" "subjectAltName=$san
extendedKeyUsage=serverAuth,clientAuth"
  fi
  # A client certificate for mutual TLS (MF_GRPC_TLS_CLIENT_AUTH=require): common name <role>/<name>.
  [ -s "$PKI_DIR/client-service.crt" ] || issue client-service "/CN=service\\/local" "extendedKeyUsage=clientAuth"
  local role
  for role in $ROLES; do
    [ -s "$PKI_DIR/token.$role" ] || { openssl rand -hex 32 > "$PKI_DIR/token.$role"; }
  done
  write_token_file
  local entry user
  for entry in $REDIS_USERS admin:; do
    user=${entry%%:*}
    [ -s "$PKI_DIR/redis-pass.$user" ] || openssl rand -hex 24 > "$PKI_DIR/redis-pass.$user"
  done
  write_redis_acl
  # Kafka SCRAM users (kafka.sh KAFKA_SASL=1): the broker's super user `admin` and one per service.
  for user in admin $KAFKA_USERS; do
    [ -s "$PKI_DIR/kafka-pass.$user" ] || openssl rand -hex 24 > "$PKI_DIR/kafka-pass.$user"
  done
  umask 022
  chmod 644 "$PKI_DIR/ca.crt" "$PKI_DIR/server.crt" "$PKI_DIR/client-service.crt"
}

# issue NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
issue() {
  local name=$1 subject=$2 ext=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI_DIR/$name.key" \
    -out "$PKI_DIR/$name.csr" -subj "$subject" 2>/dev/null
  printf '%s\n' "$ext" > "$PKI_DIR/$name.ext"
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" -CAcreateserial \
    -days "$PKI_DAYS" -out "$PKI_DIR/$name.crt" -extfile "$PKI_DIR/$name.ext" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

# The token file: the local roles' hashes, then any lines an operator added to tokens.extra.
write_token_file() {
  local role tmp="$PKI_DIR/tokens.tmp"
  { echo "# sha256:<hash of the token> <role> [<account>]; made by deploy/local/pki.sh"
    for role in $ROLES; do echo "sha256:$(hash_of "$(cat "$PKI_DIR/token.$role")") $role"; done
    [ -f "$PKI_DIR/tokens.extra" ] && cat "$PKI_DIR/tokens.extra"
  } > "$tmp"
  mv "$tmp" "$PKI_DIR/tokens"
}

write_redis_acl() {
  local entry user prefix tmp="$PKI_DIR/redis.acl.tmp"
  { echo "user default off"
    for entry in $REDIS_USERS; do
      user=${entry%%:*}; prefix=${entry#*:}
      echo "user $user on #$(hash_of "$(cat "$PKI_DIR/redis-pass.$user")") resetkeys ~${prefix}* resetchannels +@all -@dangerous"
    done
    echo "user admin on #$(hash_of "$(cat "$PKI_DIR/redis-pass.admin")") ~* &* +@all"
  } > "$tmp"
  chmod 644 "$tmp"   # hashes only: the Redis server (another user in containers) reads it
  mv "$tmp" "$PKI_DIR/redis.acl"
}

# rotate ROLE: a new token for ROLE; the old one stops working when the services restart.
rotate() {
  local role=$1
  case " $ROLES " in *" $role "*) ;; *) mf_log "roles made here: $ROLES"; exit 2 ;; esac
  umask 077; openssl rand -hex 32 > "$PKI_DIR/token.$role"; write_token_file
  mf_log "new $role token in $PKI_DIR/token.$role; restart the services to drop the old one"
}

# What the services of `make run` read: TLS on every server, every call authenticated.
env_out() {
  echo "MF_GRPC_TLS_CERT_FILE=$PKI_DIR/server.crt"
  echo "MF_GRPC_TLS_KEY_FILE=$PKI_DIR/server.key"
  echo "MF_GRPC_TLS_CA_FILE=$PKI_DIR/ca.crt"
  echo "MF_AUTH_TOKENS_FILE=$PKI_DIR/tokens"
  echo "MF_AUTH_TOKEN_FILE=$PKI_DIR/token.service"
  # KAFKA_SASL=1 / REDIS_ACL=1: the supervisor gives each service its own user from these files.
  if [ "${KAFKA_SASL:-0}" = 1 ]; then echo "MF_KAFKA_SASL_USERS_DIR=$PKI_DIR"; fi
  if [ "${REDIS_ACL:-0}" = 1 ]; then echo "MF_REDIS_USERS_DIR=$PKI_DIR"; fi
}

# What the operator's CLI reads (MF_CLIENT_ENV_FILE): the CA and the risk-admin token.
client_env_out() {
  echo "MF_GRPC_TLS_CA_FILE=$PKI_DIR/ca.crt"
  echo "MF_AUTH_TOKEN_FILE=$PKI_DIR/token.risk-admin"
}

case "${1:-}" in
  ensure) ensure; client_env_out > "$PKI_DIR/client.env" ;;
  env) env_out ;;
  client-env) client_env_out ;;
  rotate) ensure; rotate "${2:?role}" ;;
  *) echo "usage: $0 ensure|env|client-env|rotate ROLE" >&2; exit 2 ;;
esac
