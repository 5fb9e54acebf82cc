"""Node-to-node plane: WebSocket carrying CBOR frames."""
