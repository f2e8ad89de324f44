"""``ladder kafka-acl``: the Kafka ACLs of every service's principal (``ladder.kafkaacl``)
for a Kafka cluster, as ``kafka-acls.sh --add`` commands to run as the cluster's
administrator (the embedded broker, tansu 0.6, enforces no ACLs). Topic and group names
follow the deployment's LADDER_TOPIC_PREFIX; each service then authenticates as its
principal with LADDER_KAFKA_<SERVICE>_USER and _PASSWORD (``ladder.kafkasecurity``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ladder import kafkaacl
from ladder.config import Settings, Topics


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic-prefix", default=None,
                        help="the deployment's LADDER_TOPIC_PREFIX (default: the environment's)")
    parser.add_argument("--bootstrap", default="$BOOTSTRAP",
                        help="the cluster's bootstrap servers (default: a $BOOTSTRAP variable)")
    parser.add_argument("--command-config", default="admin.properties", metavar="FILE",
                        help="kafka-acls.sh's client properties of the administrator "
                             "(default: admin.properties)")
    parser.add_argument("--table", action="store_true",
                        help="print the principals as a Markdown table instead")


def _run(args: argparse.Namespace) -> int:
    if args.table:
        print(kafkaacl.markdown_table())
        return 0
    prefix = args.topic_prefix
    if prefix is None:
        prefix = Settings.from_env().topics.prefix
    for line in kafkaacl.kafka_acls_commands(Topics(prefix), args.bootstrap,
                                             args.command_config):
        print(line)
    return 0


def register(commands: dict[str, Any], command: Any) -> None:
    commands["kafka-acl"] = command(
        "print the Kafka ACLs of every service's principal (kafka-acls.sh commands)",
        _arguments, _run,
    )
