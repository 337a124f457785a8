"""A subcommand of the `symnet` command line."""
import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Verb:
    """A subcommand: `arguments(parser)` declares its flags, `run(args)` does the work;
    `aliases` are other names for it (`summary` for `check`)."""
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    aliases: tuple[str, ...] = ()
