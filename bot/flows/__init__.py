"""Flows: one module per feature area, each an explicit, persisted state machine."""
