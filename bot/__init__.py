"""byokbot's behaviour: router, flows, texts, composition root and command line."""
