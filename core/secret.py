"""A type for secret values that never shows itself in a repr, a log line or an f-string."""

from __future__ import annotations

import hmac
from typing import Final, final

_MASK: Final = "Secret('********')"


@final
class Secret:
    """Holds a credential; ``str``/``repr``/``format`` print a mask, ``reveal()`` gives the value.

    Equality is constant-time and hashing is deliberately unsupported, so a Secret cannot end up
    as a dict key that a debugger or error report would print.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the plaintext. Call only at the point of use (encrypting, an outbound header)."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> str:
        # Pickling would copy the plaintext into places nobody audits (queues, caches).
        raise TypeError("Secret values cannot be pickled")
