"""`python -m symnet ...` and the `symnet` command: the command line (symnet/cli.py)."""
import sys


def entry():
    """Run the command line. A Ctrl-C while it loads exits quietly with 130, as it does
    later (main() loads the compiler, about a second, once the arguments are parsed)."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        return 130                    # the shell's status for a command ended by Ctrl-C
    return main()


if __name__ == "__main__":
    sys.exit(entry())
