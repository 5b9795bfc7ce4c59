"""The contract both wings share, pure: errors, config, LSNs (no connection, no Kafka client).

Imports nothing of Tributary's outside ``cdc.core``; ``tests/unit/test_layout.py`` holds it to
that.
"""
