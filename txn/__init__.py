"""Transactions over Raft groups: coordinator and participants, every step a log record."""
