"""The `tinymlops` command line: one entry point, `--help` on every command.

Each command group lives in `tinymlops/commands/<group>.py` and keeps its heavy
imports inside the command body, so `tinymlops --help` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from tinymlops.errors import MissingExtraError
from tinymlops.extras import COMMAND_EXTRAS, extra_providing, missing_extra

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
    ("drift", "drift", "drift"),
    ("watermark", "watermark", "watermark"),
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

    def invoke(self, ctx: click.Context) -> Any:
        # A command's heavy imports run inside its body: a dependency its extra brings that is not installed
        # surfaces here, and becomes one line naming the extra instead of a traceback.
        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            raise click.ClickException(str(exc)) from exc
        except ModuleNotFoundError as exc:
            command = ctx.invoked_subcommand or ""
            missing = (exc.name or "").partition(".")[0]
            extra = extra_providing(missing, preferred=COMMAND_EXTRAS.get(command))
            if extra is None:
                raise
            raise click.ClickException(str(missing_extra(extra, missing, f"tinymlops {command}"))) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinymlops")
def main() -> None:
    """Operate one ONNX model across fleets of heterogeneous edge devices."""
