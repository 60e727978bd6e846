"""The console adapter: a terminal chat as one local person, for laptops, demos and tests."""

from adapters.console.adapter import ConsoleAdapter

__all__ = ["ConsoleAdapter"]
