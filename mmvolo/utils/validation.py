"""One style of constructor-argument validation for every module (VOLO, the token mixers,
OutlookAttention, MixerNeck).

A *rule* is a function ``rule(value) -> normalised value`` that raises ``TypeError`` (wrong
kind) or ``ValueError`` (wrong value) whose message is the rule only (``'must be >= 1'``).
:func:`check_args` runs a module's rules and turns the first failure into one line that names
the module, the argument and the value: ``VOLO out_indices=(0, 5): must be a non-empty subset
of 0..3``, of the rule's exception type.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

Rule = Callable[[Any], Any]


def check_args(owner: str, rules: Mapping[str, Rule], values: Mapping[str, Any]
               ) -> dict[str, Any]:
    """The ``values`` that have a rule, normalised by it.

    Raises:
        TypeError, ValueError: one line, ``'<owner> <name>=<value!r>: <rule>'``.
    """
    checked = {}
    for name, value in values.items():
        if name in rules:
            checked[name] = check_arg(name, value, rules[name], owner)
    return checked


def check_arg(name: str, value: Any, rule: Rule, owner: str = '') -> Any:
    """``rule(value)``, its error prefixed by ``<owner> <name>=<value!r>: `` (one line)."""
    try:
        return rule(value)
    except (TypeError, ValueError) as error:
        prefix = f'{owner} ' if owner else ''
        raise type(error)(f'{prefix}{name}={value!r}: {error}') from None


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(minimum: int) -> Rule:
    """Rule: an int >= ``minimum``."""

    def rule(value: Any) -> int:
        if not is_int(value):
            raise TypeError(f'must be an int >= {minimum}')
        if value < minimum:
            raise ValueError(f'must be an int >= {minimum}')
        return int(value)

    return rule


def int_in(low: int, high: int, meaning: str = '') -> Rule:
    """Rule: an int in ``low..high`` (``meaning`` explains the range)."""
    why = f' ({meaning})' if meaning else ''

    def rule(value: Any) -> int:
        if not is_int(value):
            raise TypeError(f'must be an int in {low}..{high}')
        if not low <= value <= high:
            raise ValueError(f'must be in {low}..{high}{why}')
        return int(value)

    return rule


def odd_int(why: str = 'a centred window, padding K//2') -> Rule:
    """Rule: an odd int >= 1."""

    def rule(value: Any) -> int:
        if not is_int(value) or value < 1 or value % 2 == 0:
            raise ValueError(f'must be an odd int >= 1 ({why})')
        return int(value)

    return rule


def exactly(expected: Any, message: str) -> Rule:
    """Rule: the value ``expected`` and nothing else (``message`` says why)."""

    def rule(value: Any) -> Any:
        if value != expected:
            raise ValueError(message)
        return value

    return rule


def divisor_of(total: int, what: str) -> Rule:
    """Rule: an int >= 1 that divides ``total`` (``what`` names it, e.g. 'embed_dims=48')."""

    def rule(value: Any) -> int:
        if not is_int(value) or value < 1 or total % value:
            raise ValueError(f'must divide {what} (an int >= 1)')
        return int(value)

    return rule


def rate(value: Any) -> float:
    """Rule: a probability-like rate in [0, 1)."""
    if not is_real(value):
        raise TypeError('must be a number in [0, 1)')
    if not 0 <= value < 1:
        raise ValueError('must be in [0, 1)')
    return float(value)


def positive_number(value: Any) -> float:
    """Rule: a finite number > 0."""
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError('must be a finite number > 0')
    return float(value)
