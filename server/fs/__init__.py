"""The file system behind the gateway: records, state machine, operations."""
