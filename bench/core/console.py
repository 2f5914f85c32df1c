"""The terminal: one rich console for output and one for errors, and the exit codes every command uses."""

from __future__ import annotations

import sys

from rich.console import Console

# Wide enough for the summary table when output goes to a file or CI log (rich assumes 80 columns there).
_width = None if sys.stdout.isatty() else 200
console = Console(highlight=False, width=_width)
# Messages are never wrapped: an error naming two long paths stays one line for grep and log readers (a terminal
# wraps it on screen by itself).
err = Console(stderr=True, highlight=False, width=_width, soft_wrap=True)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
