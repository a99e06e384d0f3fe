"""User-facing errors: the entry scripts print these as one line and exit non-zero."""


class IFMError(Exception):
    """Bad input (missing file, keys that do not fit, offline download...) with a one-line fix."""


class IFMWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. unreadable lines skipped)."""
