"""The one error contract of the ``medpipe`` command.

Every error a user can cause or fix (a bad config, a missing or damaged file, a busy run folder, a
missing GPU) derives from :class:`MedpipeError`. ``medpipe.cli.main`` catches it once, prints its message
as one line on stderr and exits with its ``exit_code``: 2 for bad input (the default), 1 for a fault of
the machine or a diverged run (ingest faults, non-finite numbers), 3 for a GPU job without a usable GPU.
Each class keeps its builtin base too (``ValueError``, ``RuntimeError``), so ``except ValueError`` works.
"""

from __future__ import annotations


class MedpipeError(Exception):
    """A user-facing error: its message names the file or setting and the problem, in one line."""

    exit_code = 2
    names_command = False  # True: the line starts with `medpipe <command>:` (a message naming no file)
