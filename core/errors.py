"""One exception tree for the core. User-facing wording lives in ``bot/texts.py``, not here.

::

    CoreError
    ├── ConfigError             the configuration file or environment is wrong (start-up stops)
    ├── StartupError            a service the bot needs cannot be reached, or is held by another
    │                           process (start-up stops; exit status 1, not 2)
    ├── VaultError              encryption at rest
    │   ├── MasterKeyError      missing, empty or malformed master key
    │   ├── DecryptionError     unversioned, truncated, tampered or foreign ciphertext
    │   └── KeyRetiredError     a value wrapped under a master key that is no longer loaded
    ├── KeyShapeError           a provider key of the wrong shape (``reason`` says which)
    ├── IntakeError             a one-time intake session refused the submission
    │   ├── IntakeExpired
    │   ├── IntakeUsed
    │   ├── IntakeNotYours
    │   └── IntakeLocked        too many attempts
    ├── TenantError
    │   ├── TenantNotFound
    │   ├── TenantSuspended
    │   └── TenantDeleted
    ├── PlanError               unknown plan, or a change the plan does not allow
    └── AgentUnavailable        the tenant's agent cannot take a message now

Messages carry no secret: constructors take identifiers and reasons, never key material.
"""

from __future__ import annotations


class CoreError(Exception):
    """Root of every error the core raises on purpose."""


class ConfigError(CoreError):
    """The configuration is wrong; the message names the file, section and setting."""


class StartupError(CoreError):
    """Start-up cannot finish for a reason outside the configuration (exit status 1).

    A service is unreachable, or another process holds what this one needs. The message is
    one line for the operator.
    """


class VaultError(CoreError):
    """Encryption at rest failed."""


class MasterKeyError(VaultError):
    """The master key is missing, empty or malformed."""


class DecryptionError(VaultError):
    """A stored value could not be authenticated and decrypted. Never falls back to the input."""


class KeyRetiredError(VaultError):
    """A value was wrapped under a master key version that is not loaded."""


class KeyShapeError(CoreError):
    """A provider key does not have the shape its provider issues."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"{provider} key rejected: {reason}")
        self.provider = provider
        self.reason = reason


class IntakeError(CoreError):
    """A one-time intake session refused a submission."""


class IntakeExpired(IntakeError):
    """The session's time ran out or it was closed."""


class IntakeUsed(IntakeError):
    """The session already took its one secret."""


class IntakeNotYours(IntakeError):
    """The session belongs to another person or tenant."""


class IntakeLocked(IntakeError):
    """Too many attempts; the session is closed."""


class TenantError(CoreError):
    """A tenant cannot do what was asked."""


class TenantNotFound(TenantError):
    """No tenant for that identity or id."""


class TenantSuspended(TenantError):
    """An operator suspended the tenant."""


class TenantDeleted(TenantError):
    """The tenant erased their account."""


class PlanError(CoreError):
    """Unknown plan or a change the plan catalog does not allow."""


class AgentUnavailable(CoreError):
    """The tenant's agent cannot take a message right now; ``reason`` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
