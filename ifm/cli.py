"""The command-line edge: library errors become one ``error:`` line and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

from .errors import IFMError


def cli_main(run: Callable[[], object]) -> int:
    """Call ``run``; an :class:`IFMError` prints ``error: <message>`` on stderr and returns 2; else the exit
    code ``run`` returns (0 when it returns anything else)."""
    try:
        result = run()
    except IFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
