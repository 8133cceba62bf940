"""The `lantern` command: a thin click layer that gathers each package's command groups."""

from __future__ import annotations

import importlib

import click

from lantern import __version__

# name -> "module:attribute". Each command's module is imported only when that command runs
# (or help lists it): `lantern scan` then starts without the agent service and metering code.
_COMMANDS = {
    "catalog": "signatures.cli:catalog",
    "scan": "agent.cli:scan",
    "meter": "agent.metering.cli:meter",
    "agent": "agent.cli_agent:agent",
    "me": "agent.cli_agent:me",
    "collector": "collector.cli:collector",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{target} is not a click command")
        self.add_command(cmd, cmd_name)
        return cmd


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from agent.native import describe  # noqa: PLC0415 - importing agent decides it

    click.echo(f"lantern {__version__} (packet decoders: {describe()})")
    ctx.exit()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, and whether the compiled packet decoders are in use, and exit.",
)
def main() -> None:
    """Lantern shows which AI tools are used, what they cost, and where data goes,
    without keeping anyone's prompts."""
