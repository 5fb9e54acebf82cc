"""Deterministic transaction ids.

Rules:
- A txn id is a pure function of the client request: (client id, request id, attempt). A client
  that retries the same request (a lost reply, a leader change) sends the same id, so the groups
  recognise it and answer the remembered outcome instead of applying it twice (exactly once).
- `attempt` is bumped only after a definitive abort the client chose to retry (a lock conflict):
  the earlier attempt is known to have changed nothing, so a fresh id cannot apply twice.
- Ids are 16 bytes of BLAKE2b; they are never reused (STYLE.md habit 8) as long as a client never
  reuses a request id.
"""

from __future__ import annotations

import hashlib

TxnId = bytes
TXN_ID_BYTES = 16
_PERSON = b"objcache-txn-v1"


def txn_id(client_id: bytes | int, request_id: int, attempt: int = 0) -> TxnId:
    """The id of attempt `attempt` of request `request_id` from `client_id`."""
    assert request_id >= 0 and attempt >= 0, (request_id, attempt)
    client = client_id.to_bytes(8, "big") if isinstance(client_id, int) else client_id
    h = hashlib.blake2b(digest_size=TXN_ID_BYTES, person=_PERSON)
    # Length-prefix the variable part so distinct inputs never hash the same byte string.
    h.update(len(client).to_bytes(4, "big"))
    h.update(client)
    h.update(request_id.to_bytes(8, "big"))
    h.update(attempt.to_bytes(4, "big"))
    return h.digest()


def short(txn: TxnId) -> str:
    """A short printable form for logs and traces."""
    return txn[:4].hex()
