"""The short fault campaign of `make test` (the long one is `make faults`): one scenario on a
3-member group of 3 nodes in network namespaces — kill -9, a leader isolated with a
minority, a full cache disk, the S3 server down and throttling (each once), and a node started
on an old copy of its data directory — then every acknowledged
write read back, fsck, drain and the bucket compared (campaign.py). About a minute.

OBJCACHE_FAULT_SEED picks the seed (default 7: the same fault schedule every run; timing
still varies). Needs root for `ip netns` (make test runs as root in CI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from campaign import QUICK, run_campaign

pytestmark = pytest.mark.integration


def test_quick_fault_campaign(tmp_path: Path, s3_server) -> None:
    assert os.geteuid() == 0, "the fault campaign needs root (ip netns)"
    seed = int(os.environ.get("OBJCACHE_FAULT_SEED", "7"))
    report = run_campaign(QUICK, tmp_path, seed, s3=s3_server)
    print(report.text())
    assert report.scenarios == ["quick"]
    assert sum(report.faults.values()) >= 3  # faults were injected, not skipped
    assert sum(report.ops.values()) >= 100 and report.reads_checked >= 50
    if report.failures:  # pytest prunes old tmp_paths: keep the logs where they stay
        kept = Path(tempfile.mkdtemp(prefix=f"objcache-faults-seed{seed}-"))
        shutil.copytree(tmp_path, kept, dirs_exist_ok=True, ignore_dangling_symlinks=True)
        raise AssertionError(f"seed {seed}, logs in {kept}:\n{report.text()}")
