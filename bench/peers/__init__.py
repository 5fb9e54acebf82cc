"""The systems bench/model_startup.py measures against direct copy: s3fs, rclone mount,
SeaweedFS's remote-storage cache, JuiceFS and objcache itself, plus the namespaced S3 server
they all read from. One module per system; common.py holds what they share."""
