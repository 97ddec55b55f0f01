"""The `tinymlops` command tree, walked once for the tests that check every command (help, docs)."""

from __future__ import annotations

import click


def leaf_commands() -> list[tuple[list[str], click.Command]]:
    """Every runnable command with its path below `tinymlops` (e.g. ["agent", "infer"]), sorted by path."""
    from tinymlops.cli import main

    found: list[tuple[list[str], click.Command]] = []
    pending: list[tuple[list[str], click.Command]] = [([], main)]
    context = click.Context(main)
    while pending:
        path, command = pending.pop()
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None, name
                pending.append(([*path, name], sub))
        else:
            found.append((path, command))
    return sorted(found, key=lambda entry: entry[0])
