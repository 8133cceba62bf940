"""The `lantern` command: a thin click layer that gathers each package's command groups."""

from __future__ import annotations

import click

from agent.cli import scan
from agent.cli_agent import agent, me
from agent.metering.cli import meter
from lantern import __version__
from signatures.cli import catalog


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lantern")
def main() -> None:
    """Lantern shows which AI tools are used, what they cost, and where data goes,
    without keeping anyone's prompts."""


main.add_command(catalog)
main.add_command(scan)
main.add_command(meter)
main.add_command(agent)
main.add_command(me)
