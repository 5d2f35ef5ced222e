import contextlib
import errno
import json
import os
import resource
import signal
import stat

import pytest
import torch

from decomp.experiments.runinfo import (WriteError, atomic_torch_save, atomic_write_bytes, atomic_write_text,
                                       environment_info, write_artifacts, write_sidecar)


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


@contextlib.contextmanager
def _small_disk(limit: int = 64):
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("write", [lambda p: atomic_write_text(p, "x" * 100), lambda p: atomic_write_bytes(p, b"x" * 100),
                                   lambda p: atomic_torch_save({"a": torch.ones(100)}, p)])
def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, write):
    path = tmp_path / "out" / "table.md"
    path.parent.mkdir()
    with pytest.raises(WriteError, match=rf"could not write {path}: File too large") as caught, _small_disk():
        write(path)
    assert caught.value.errno == errno.EFBIG and isinstance(caught.value, OSError)
    assert list(path.parent.iterdir()) == []


def test_a_folder_that_cannot_be_made_names_the_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=rf"could not write {tmp_path / 'file' / 'x.md'}: "):
        atomic_write_text(tmp_path / "file" / "x.md", "x")


def test_a_figure_on_a_full_disk_leaves_no_temporary(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from decomp.experiments.reproduce import _save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with pytest.raises(OSError, match=rf"could not write {tmp_path / 'plot.png'}: File too large"), _small_disk():
        _save_figure(fig, tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == []


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
    monkeypatch.setattr(runinfo, "STARTED_ON", None)  # not read at import: read at each call
    monkeypatch.setattr(runinfo, "_git", lambda *args: None)
    info = environment_info()
    assert info["git_sha"] is None and info["git_dirty"] is None


def test_sidecars_name_the_commit_the_process_started_on(monkeypatch):
    """A long run's sidecars, written at its end, name the commit its code was imported from,
    not one committed while it ran."""
    from decomp.experiments import runinfo

    monkeypatch.delenv("DECOMP_GIT_SHA", raising=False)
    assert runinfo.STARTED_ON is not None and runinfo.STARTED_ON[0] == runinfo.git_state()[0]
    monkeypatch.setattr(runinfo, "_git", lambda *args: "f" * 40 if args[0] == "rev-parse" else " M decomp/x.py")
    assert runinfo.git_state() == ("f" * 40, True)  # HEAD has moved on and the tree is dirty now
    info = environment_info()
    assert (info["git_sha"], info["git_dirty"]) == runinfo.STARTED_ON


def test_write_artifacts_writes_each_file_with_its_sidecar(tmp_path):
    paths = write_artifacts({tmp_path / "a.csv": "x\n1\n", tmp_path / "b.md": "# b\n"}, extra={"seed": 3})
    assert [p.name for p in paths] == ["a.csv", "b.md"]
    assert (tmp_path / "a.csv").read_text() == "x\n1\n"
    for name in ("a.csv", "b.md"):
        info = json.loads((tmp_path / f"{name}.json").read_text())
        assert info["artifact"] == name and info["seed"] == 3


def test_cpu_identity_reads_the_first_processor():
    from decomp.experiments.runinfo import cpu_identity

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
            "stepping\t: 2\ncpu MHz\t\t: 1996.249\ncache size\t: 512 KB\n\nprocessor\t: 1\ncpu family\t: 99\n")
    assert cpu_identity(text) == {"vendor": "AuthenticAMD", "family": 23, "model": 1, "stepping": 2, "mhz": 1996,
                                  "cache": "512 KB"}
    assert cpu_identity("") is None
    assert cpu_identity("processor\t: 0\nmodel\t: x\n")["model"] is None  # unreadable fields are None
