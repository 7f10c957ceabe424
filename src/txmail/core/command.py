"""What a ``txmail`` subcommand is, for the services that offer one.

``txmail.cli``, the one composition root, reads the configuration once (the settings
and the rules file) and hands it to the command the arguments name. A command returns
its exit code; one that cannot use the configuration raises ConfigError, which
``txmail.cli`` prints and ends with exit code 2, for every command alike.
"""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from txmail.core.rules_file import RulesFile
from txmail.core.settings import Settings


@dataclass(frozen=True)
class Configuration:
    settings: Settings
    # The file at TXMAIL_RULES, checked against its schema; None when it is not set.
    rules_file: RulesFile | None


Command: TypeAlias = Callable[[Configuration, argparse.Namespace], int]

# Where a service adds its subcommands (``add_parser``), each with ``handler=`` a Command.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
