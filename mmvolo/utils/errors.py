"""One-line error reports: what every tool and stage prints of an exception."""
from __future__ import annotations


def first_line(error: BaseException, limit: int = 200) -> str:
    """First line of an error's message (at most ``limit`` characters), for one-line reports;
    the exception's type name when the message is empty."""
    text = str(error).strip().splitlines()
    return text[0][:limit] if text else type(error).__name__


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    name = type(error).__name__
    message = first_line(error, limit)
    return (name if message == name else f'{name}: {message}')[:limit]
