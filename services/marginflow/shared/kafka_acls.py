"""Who may write which Kafka topic: one SCRAM user per service, each writing only its own topics.

:data:`WRITERS` is the one table (service → the topics it produces); every service user may read
every platform topic, use consumer groups and create topics (services create the ones they need
at start). ``python -m marginflow.shared.kafka_acls`` applies it as the broker's super user
(``deploy/local/kafka.sh`` runs it when the broker starts with ``KAFKA_SASL=1``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

from marginflow.shared.config import Topics

WRITERS: Mapping[str, Callable[[Topics], tuple[str, ...]]] = {
    "marketdata": lambda t: (t.ticks, t.marks, t.ticks_dlq, t.audit),
    "riskparams": lambda t: (t.risk_params, t.riskparams_dlq, t.audit),
    "portfolio": lambda t: (t.positions, t.open_interest, t.account_events, t.portfolio_dlq, t.audit),
    "margin": lambda t: (t.margin_state, t.margin_calls, t.margin_snapshot, t.margin_dlq, t.audit),
    # the fund's ledger, bankruptcy take-over / ADL fills, and the fund's deposits to bankrupt accounts
    "liquidation": lambda t: (t.liquidation_orders, t.liquidation_events, t.liquidation_fund, t.fills,
                              t.account_events, t.liquidation_dlq, t.audit),
    "exchange-sim": lambda t: (t.fills, t.account_events),   # fills; the house's collateral on the first start
    "demo-book": lambda t: (t.fills, t.account_events),   # the demo's opening book (make run only)
}
SERVICE_USERS = tuple(WRITERS)


def acls_for(topics: Topics):
    """The ACL entries of the platform (kafka-python's ``ACL`` objects)."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
    from kafka.admin import ACLResourcePatternType as ResourcePatternType

    def allow(user: str, op, rtype, name: str, pattern=ResourcePatternType.LITERAL) -> ACL:
        return ACL(f"User:{user}", "*", op, ACLPermissionType.ALLOW, ResourcePattern(rtype, name, pattern))

    entries = []
    for user, writes in WRITERS.items():
        for topic in writes(topics):
            entries.append(allow(user, ACLOperation.WRITE, ResourceType.TOPIC, topic))
        # Reading any topic of the platform (under its prefix), any consumer group, creating topics.
        if topics.prefix:
            entries.append(allow(user, ACLOperation.READ, ResourceType.TOPIC, topics.prefix, ResourcePatternType.PREFIXED))
            entries.append(allow(user, ACLOperation.DESCRIBE, ResourceType.TOPIC, topics.prefix,
                                 ResourcePatternType.PREFIXED))
        else:
            entries.append(allow(user, ACLOperation.READ, ResourceType.TOPIC, "*"))
            entries.append(allow(user, ACLOperation.DESCRIBE, ResourceType.TOPIC, "*"))
        entries.append(allow(user, ACLOperation.READ, ResourceType.GROUP, "*"))
        entries.append(allow(user, ACLOperation.CREATE, ResourceType.CLUSTER, "kafka-cluster"))
        entries.append(allow(user, ACLOperation.DESCRIBE_CONFIGS, ResourceType.TOPIC, "*"))
    return entries


def apply(bootstrap: str, topics: Topics, **admin_options) -> int:
    """Create the ACL entries; returns how many the broker accepted (existing ones count again)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="marginflow-acls", **admin_options)
    try:
        result = admin.create_acls(acls_for(topics))
    finally:
        admin.close()
    if result.get("failed"):
        raise RuntimeError(f"ACLs refused by the broker: {result['failed'][:3]}")
    return len(result.get("succeeded", []))


def main() -> int:
    """Env: KAFKA_BOOTSTRAP_SERVERS, MF_TOPIC_PREFIX, and the super user's MF_KAFKA_SASL_* settings."""
    from marginflow.shared.config import CommonSettings, ConfigError, load

    try:
        common = load(CommonSettings)
    except ConfigError as exc:
        print(f"kafka_acls: {exc}", file=sys.stderr)
        return 2
    n = apply(common.bootstrap, common.topics, **common.kafka_security.client_options())
    print(f"{n} ACL entries for {', '.join(SERVICE_USERS)} on {common.bootstrap}"
          f"{' (prefix ' + common.topic_prefix + ')' if common.topic_prefix else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MF_LOG_JSON", "false")
    raise SystemExit(main())
