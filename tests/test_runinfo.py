import json
import os
import stat

import pytest
import torch

from decomp.experiments.runinfo import atomic_torch_save, atomic_write_text, environment_info, write_artifacts, write_sidecar


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "table.md"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]  # no temporary left behind


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_sidecar_says_how_it_was_made(tmp_path):
    artifact = tmp_path / "summary.csv"
    atomic_write_text(artifact, "a,b\n1,2\n")
    sidecar = write_sidecar(artifact, command="python make.py", extra={"seed": 3})
    info = json.loads(sidecar.read_text())
    assert sidecar.name == "summary.csv.json"
    assert info["command"] == "python make.py" and info["seed"] == 3
    for key in ("git_sha", "python", "packages", "cpu", "torch_threads", "created_utc"):
        assert key in info
    assert info["packages"]["torch"] == torch.__version__.split("+")[0]


def test_environment_info_is_json_serialisable():
    json.dumps(environment_info())


def test_git_sha_from_the_environment_wins(monkeypatch):
    """A tree copied to a GPU machine (no .git, or a stale one) records the sha its sender passes."""
    from decomp.experiments import runinfo

    monkeypatch.setenv("DECOMP_GIT_SHA", "abc123")
    info = environment_info()
    assert info["git_sha"] == "abc123" and info["git_dirty"] is None
    monkeypatch.delenv("DECOMP_GIT_SHA")
    assert environment_info()["git_sha"] != "abc123"
    monkeypatch.setattr(runinfo, "_git", lambda *args: None)
    info = environment_info()
    assert info["git_sha"] is None and info["git_dirty"] is None


def test_write_artifacts_writes_each_file_with_its_sidecar(tmp_path):
    paths = write_artifacts({tmp_path / "a.csv": "x\n1\n", tmp_path / "b.md": "# b\n"}, extra={"seed": 3})
    assert [p.name for p in paths] == ["a.csv", "b.md"]
    assert (tmp_path / "a.csv").read_text() == "x\n1\n"
    for name in ("a.csv", "b.md"):
        info = json.loads((tmp_path / f"{name}.json").read_text())
        assert info["artifact"] == name and info["seed"] == 3
