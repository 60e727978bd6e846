"""The domain of byokbot: tenants, plans, vault, intake, agents. Platform-free."""
