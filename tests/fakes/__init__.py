"""Loopback fakes of the platforms and providers the tests drive the real libraries against."""
