"""Exit codes and the one error wrapper of every command of the suite.

A user error (a missing file, a bad flag value, a checkpoint of the wrong kind) is a
``UserError``: the command prints one line that names the problem and the fix and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and failed (a seed failed, a demo step failed)
EXIT_USAGE = 2  # a user error: bad input, named in one line
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM: a resumable state was written


class UserError(Exception):
    """Bad input: the message names the thing and the fix (printed as one line)."""


class ConfigError(UserError, ValueError):
    """An invalid setting (a flag value, a config key)."""


class BadInput(UserError, ValueError):
    """Input data of the wrong layout or kind (an empty folder, a checkpoint of another kind)."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the command needs is missing."""


class Interrupted(UserError):
    """SIGINT / SIGTERM: the run stopped after writing a resumable state."""


def doc_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring's first paragraph and whose epilog
    (usage examples, notes) is the rest, kept as written."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(
        description=head, epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_cli(
    main: Callable[[argparse.Namespace], object],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, call ``main(args)``; returns the process exit code.

    ``main`` may return an int (its exit code) or anything else (0). A ``UserError`` prints
    ``error: <message>`` (``interrupted: ...`` for an ``Interrupted``) and returns 2 (130).
    """
    from common.quiet import silence_known_warnings

    silence_known_warnings()
    args = parser.parse_args(argv)
    try:
        code = main(args)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as e:
        print(f"error: {path_problem(e)}", file=sys.stderr)
        return EXIT_USAGE
    return code if isinstance(code, int) else EXIT_OK


def path_problem(e: OSError) -> str:
    """One line naming the path an output could not be written to, and the fix."""
    path = e.filename or "a path"
    if isinstance(e, NotADirectoryError):
        return (f"{path}: a file stands where a folder is needed (it or a folder above it); "
                "pass another output folder, or move the file")  # fmt: skip
    if isinstance(e, FileExistsError):
        return f"{path} exists and is not a folder; pass another output folder, or move it"
    if isinstance(e, IsADirectoryError):
        return f"{path} is a folder where a file is needed; pass a file path"
    return (f"{path}: permission denied ({e.strerror}); pass a folder you can write (is it "
            "read-only or immutable?)")  # fmt: skip
