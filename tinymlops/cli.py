"""The `tinymlops` command line: one entry point, `--help` on every command.

Each command group lives in `tinymlops/commands/<group>.py` and keeps its heavy
imports inside the command body, so `tinymlops --help` stays instant.
"""

from __future__ import annotations

import importlib

import click

# (command name, module under tinymlops.commands, attribute)
COMMANDS = [
    ("demo", "demo", "demo"),
    ("cluster", "cluster", "cluster"),
    ("operator", "operator_cmd", "operator"),
    ("gateway", "gateway", "gateway"),
    ("keys", "keys", "keys"),
    ("variants", "variants", "variants"),
    ("agent", "agent", "agent"),
    ("devices", "devices", "devices"),
]


class LazyGroup(click.Group):
    """Imports a command's module only when that command (or its help) is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in COMMANDS:
            if name == cmd_name:
                command = getattr(importlib.import_module(f"tinymlops.commands.{module}"), attr)
                assert isinstance(command, click.Command)
                return command
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinymlops")
def main() -> None:
    """Operate one ONNX model across fleets of heterogeneous edge devices."""
