"""Platform adapters: translate platform traffic to the neutral chat model and back."""
