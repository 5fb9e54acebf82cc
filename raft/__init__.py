"""Raft: a sans-I/O consensus core and its trio driver."""
