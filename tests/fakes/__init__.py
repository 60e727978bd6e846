"""Loopback fakes of the chat platforms and providers, for tests."""
