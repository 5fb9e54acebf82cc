"""NFS version 3 (RFC 1813): structures, procedures, error mapping."""
