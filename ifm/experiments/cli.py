"""The command-line edge: library errors become one ``error:`` line and exit code 2 (the library's parameter names
as the command line's flags), library warnings one ``warning:`` line each, Ctrl-C one ``interrupted`` line and exit
code 130, and a SIGTERM unwinds like Ctrl-C so that no half-written temporary file is left."""
from __future__ import annotations

import signal
import sys
import threading
import warnings
from typing import Callable

from ..errors import IFMError, IFMWarning


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def cli_main(run: Callable[[], object], interrupted: Callable[[], str] | None = None) -> int:
    """Call ``run``; an :class:`IFMError` prints ``error: <message>`` on stderr and returns 2; Ctrl-C prints
    ``interrupted`` (and ``interrupted()``: what was kept, how to go on) and returns 130; else the exit code ``run``
    returns (0 when it returns anything else)."""
    from .run import as_flags
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    show = warnings.showwarning
    shown: set[str] = set()  # each library warning once per command (the warnings registry forgets when torch
    # or another library changes the warning filters)

    def show_one_line(message, category, *where, **options) -> None:
        if issubclass(category, IFMWarning):
            if str(message) not in shown:
                shown.add(str(message))
                print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *where, **options)
    warnings.showwarning = show_one_line
    try:
        result = run()
    except IFMError as exc:
        print(f"error: {as_flags(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (f"; {interrupted()}" if interrupted is not None else ""), file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else 0
