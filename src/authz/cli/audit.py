"""`authz audit ...`: the argparse still lives in authz.audit.commands (being edited this round);
this wraps it and gives every command's --help its example."""

from __future__ import annotations

from typing import Any

from authz.cli.common import set_example, subcommands

EXAMPLES = {
    "query": "authz audit query --since 1h --effect DENY",
    "show": "AUTHZ_DATA_DIR=data/dev authz audit show 01927f6e-8f1c-7b3a-9d2e-4c5b6a7d8e9f",
    "verify": 'authz audit verify --expect "$(tail -n 1 checkpoints.txt)"',
    "checkpoint": "authz audit checkpoint >> /secure/elsewhere/authz-checkpoints",
    "prune": "authz audit prune --older-than 90d",
    "stats": "authz audit stats --since 24h --json",
}
AUDIT_EXAMPLE = "authz audit query --since 1h"


def register(commands: Any) -> None:
    from authz.audit.commands import add_audit_commands

    audit = add_audit_commands(commands)
    set_example(audit, AUDIT_EXAMPLE)
    for name, parser in subcommands(audit).items():
        if name in EXAMPLES:
            set_example(parser, EXAMPLES[name])
