"""The one exception type users see: a message naming the problem and the fix, printed as one line."""


class HySquantError(Exception):
    """Bad input or an impossible request. The CLI prints ``error: <message>`` and exits with status 2."""


class NoPolicyError(HySquantError):
    """A search method found no policy within the budgets (benchmarks record it and go on)."""


class SearchInterrupted(HySquantError):
    """A search stopped by SIGINT or SIGTERM after writing its checkpoint; the message says how to resume."""

    exit_code = 130
