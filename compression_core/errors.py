"""One-line error text: the line a user sees for an error, and how a user's value is quoted inside a message.

Engine errors are shown as one line (CLI stderr, a dashboard error box, a warning). Library errors can span many
lines and user values can hold newlines, so both helpers escape what would break the line and shorten what is long.

Examples:
    >>> error_line(ValueError("bits must be 1-8, 16 or 32; got 0\\n  (traceback text)"))
    'bits must be 1-8, 16 or 32; got 0\\\\n  (traceback text)'
    >>> error_line(ValueError("bits must be 1-8, 16 or 32; got 0\\n  (traceback text)"), first_line=True)
    'bits must be 1-8, 16 or 32; got 0'
    >>> shown("x" * 100, limit=20)
    "'xxxxxxxxx…xxxx' (100 characters)"
"""
from __future__ import annotations

SHOWN_CHARS = 80  # user values longer than this are shown shortened in messages
MAX_LINE = 600  # an error line longer than this keeps its start and its end (where messages say what is allowed)


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr` of a user value for a message, shortened in the middle when long (a 5,000-character path).

    Args:
        value: the value the user gave; `repr` escapes a newline in it, so it cannot cut the line.
        limit: longest repr shown whole, in characters.

    Returns:
        The repr, or its start, '…', its end and the value's length in characters.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}…{text[-limit // 4:]} ({len(str(value))} characters)"


def error_line(error: BaseException | str, limit: int = MAX_LINE, *, first_line: bool = False) -> str:
    """The one line shown for an error: control characters escaped, a very long line shortened.

    Args:
        error: an exception or its text. An `OSError` with a `strerror` is shown as the path it refused (via
            `shown`) and the OS's words.
        limit: longest line kept whole; a longer one keeps its first and last `limit // 2` characters.
        first_line: keep only the first non-empty line (a library's multi-line message names its cause first);
            otherwise the whole text, its newlines escaped.

    Returns:
        One printable line; the exception's type name when its text is empty.
    """
    if isinstance(error, OSError) and error.strerror:
        text = f"{shown(error.filename)}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error).strip()
    if first_line:
        text = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit // 2]} … {text[-limit // 2:]}"
