"""The toolkit's one error base: a user-facing problem, told in one line, with its exit code.

Why one base: every ``distill`` subcommand catches :class:`DistillError` at a single place
(``distill.cli.main``) and prints ``error: <message>`` with no traceback, so a new error class
never needs a new ``except`` clause. Errors of bad input (a recipe, a manifest, a cache or
checkpoint folder, an audio file) exit with 2; failures of a service or an environment the user
cannot fix by editing an input (a teacher server that will not start) exit with 1. A traceback
is kept for what is left: bugs.

Foundation layer: imported by ``students``, ``teachers`` and ``distill.*`` alike, imports nothing.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class DistillError(Exception):
    """Bad input the user can fix; the message names the file, line or key and what was expected."""

    exit_code = EXIT_BAD_INPUT


class DistillFailure(DistillError):
    """A stage that could not run (a service down, an environment missing); exit code 1."""

    exit_code = EXIT_FAILED
