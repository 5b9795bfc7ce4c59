"""The operator commands: check, status, replay, verify."""
