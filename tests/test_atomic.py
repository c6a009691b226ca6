import pytest

from leantune import atomic
from leantune.training.checkpoint import list_checkpoints


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("disk full")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_folder_build_leaves_the_old_folder(tmp_path):
    target = tmp_path / "step-000010"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["step-000010"]


def test_incomplete_checkpoints_are_ignored(tmp_path):
    (tmp_path / ".step-000020.abc.tmp").mkdir()  # what a crash mid-save leaves
    (tmp_path / "step-000010").mkdir()
    (tmp_path / "step-000010" / "progress.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010"]
