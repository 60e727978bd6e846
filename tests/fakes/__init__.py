"""Loopback fakes and recording test doubles."""
