"""The one exception type for mistakes a user can fix.

The command line prints a :class:`UserError` as one sentence and exits with status 2. Anything else that goes wrong
is a bug in ltcl and keeps its traceback, so that it can be reported and fixed rather than mistaken for a bad
setting. It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix (a bad config value, a missing or damaged file, a refused resume); the message is
    one sentence naming the key, path or value and what was expected."""
