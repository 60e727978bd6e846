"""Loopback fakes and recording test doubles."""

# Seconds a fake server waits for its handlers when a test ends: a request still held (a
# stall, a slow page, a client that went away) must not hold the teardown for aiohttp's 60.
FAKE_SHUTDOWN = 1.0
