"""Hot reload: edits and ConfigMap-style symlink swaps are picked up; bad files keep the last good."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.config.reader import ConfigError
from extproc.config.reloader import ConfigHolder

GOOD_A = "routing: {pools: [pool-a], routes: [{id: r, pool: pool-a}]}\n"
GOOD_B = "routing: {pools: [pool-b], routes: [{id: r, pool: pool-b}]}\n"


def test_bad_file_at_start_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("routing: {}\n")
    with pytest.raises(ConfigError):
        ConfigHolder(path)


def test_edit_in_place_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD_A)
    holder = ConfigHolder(path)
    v1 = holder.current.version
    assert holder.check() is False
    path.write_text(GOOD_B + "# changed\n")
    assert holder.check() is True
    assert holder.current.version != v1
    assert holder.current.config.pools == ("pool-b",)


def test_configmap_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    # Kubernetes layout: c.yaml -> ..data/c.yaml, ..data -> ..2026_a (swapped atomically).
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "c.yaml").write_text(GOOD_A)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/c.yaml", tmp_path / "c.yaml")
    holder = ConfigHolder(tmp_path / "c.yaml")
    assert holder.current.config.pools == ("pool-a",)

    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "c.yaml").write_text(GOOD_B)
    os.symlink("..v2", tmp_path / "..tmp")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    assert holder.check() is True
    assert holder.current.config.pools == ("pool-b",)


def test_bad_new_file_keeps_last_good_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD_A)
    holder = ConfigHolder(path)
    good = holder.current
    path.write_text("routing: {pools: [pool-a], routes: [{pool: nowhere}]}\n")
    assert holder.check() is False
    assert holder.current is good
    assert not holder.status.healthy
    assert "unknown pool 'nowhere'" in (holder.status.last_error or "")
    path.write_text(GOOD_B)
    assert holder.check() is True
    assert holder.status.healthy


def test_deleted_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD_A)
    holder = ConfigHolder(path)
    path.unlink()
    assert holder.check() is False
    assert holder.current.config.pools == ("pool-a",)
    assert "cannot read file" in (holder.status.last_error or "")
