"""objcache node: configuration, CLI, file-system operations, node RPC, metrics."""
