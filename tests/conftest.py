"""Shared pytest configuration for every tier."""

pytest_plugins = ["s3server"]  # SeaweedFS: the s3_server and s3_bucket fixtures
