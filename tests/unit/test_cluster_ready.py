"""server/cluster/ready.py: the ready file a cluster node writes for `objcache cluster up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cluster.ready import Ready, read_ready, ready_path, remove_ready, write_ready


def test_write_read_remove(tmp_path: Path) -> None:
    assert read_ready(tmp_path) is None
    path = write_ready(tmp_path, node_id=2, group=1, nfs="127.0.0.1:21003",
                       rpc="127.0.0.1:21004", metrics=None, pid=77)
    assert path == ready_path(tmp_path) == tmp_path / "ready.json"
    assert read_ready(tmp_path) == Ready(2, 1, "127.0.0.1:21003", "127.0.0.1:21004", None, 77)
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left
    write_ready(tmp_path, node_id=2, group=1, nfs="a", rpc="b", metrics="c", pid=78)
    assert read_ready(tmp_path).metrics == "c"  # type: ignore[union-attr]
    remove_ready(tmp_path)
    remove_ready(tmp_path)  # idempotent
    assert read_ready(tmp_path) is None


@pytest.mark.parametrize("text", ["", "{", "[]", '{"node_id": 1}',
                                  '{"node_id": "1", "group": 1, "nfs": "a", "rpc": "b", '
                                  '"metrics": null, "pid": 3}'])
def test_malformed_ready_file(tmp_path: Path, text: str) -> None:
    ready_path(tmp_path).write_text(text)
    with pytest.raises(ValueError, match="not a ready file"):
        read_ready(tmp_path)
