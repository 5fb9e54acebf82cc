"""NFSv3 front end: XDR, ONC RPC, portmap, MOUNT and NFS v3 over a Backend protocol."""
