"""Loopback fakes of platform servers and other test doubles."""
