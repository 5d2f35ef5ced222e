"""How a result was made: atomic file writes and the JSON sidecar every result carries.

Every table, plot and checkpoint the project writes goes through :func:`atomic_write_text`,
:func:`atomic_write_bytes` or :func:`atomic_torch_save`, so an interrupted run never leaves a
half-written file behind, and each artifact in ``results/`` gets a sidecar from
:func:`write_sidecar` (command, git sha, package versions, hardware, threads, seeds, timings).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_torch_save",
    "WriteError",
    "environment_info",
    "write_sidecar",
    "write_artifacts",
]

_PACKAGES = ("decomp", "torch", "torchvision", "tensorly", "numpy", "scipy", "pandas", "thop")


def _default_mode() -> int:
    """0o666 less the process umask: what ``open()`` would give (mkstemp files are 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(OSError):
    """An ``OSError`` while writing a result file, naming that file (not its temporary name)."""


def _named(error: OSError, path: Path) -> WriteError:
    return WriteError(error.errno, f"could not write {path}: {error.strerror or error}")


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success rename it over ``path``, on any
    error remove it, so ``path`` is either the old file or the whole new one. An ``OSError``
    (a full disk, a read-only folder) comes out as a :class:`WriteError` that names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _named(e, path) from e
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _named(e, path) from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (save ``state_dict``s, not pickled modules)."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file, so that a full disk is an OSError, not a RuntimeError
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """``(HEAD's sha, whether tracked files outside results/ differ from it)``, read now; ``None``
    where git cannot tell. results/ is left out: a run rewrites its own tracked result files."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)results")
    return _git("rev-parse", "HEAD"), None if status is None else bool(status)


# The git state of the tree this process imported its code from, read once when this module is
# first imported (every script imports it before its long work). A run of half an hour writes
# its sidecars at the end: by then HEAD may have moved on, but the code that ran is this one.
STARTED_ON: tuple[str | None, bool | None] | None = git_state()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_identity(text: str | None = None) -> dict[str, Any] | None:
    """Vendor, family, model, stepping, clock (MHz) and cache of the first CPU in ``/proc/cpuinfo``
    (``text``: its contents, for tests); None where there is none. A virtual machine's model name
    can be as vague as "AMD EPYC": family 23 model 1 (Zen 1, 2.0 GHz) and another EPYC behind the
    same name timed the CIFAR VGG16-BN of ``results/cifar10/cpu_e40`` at batch 1 1.5-2x apart,
    and its latency-x3 architecture x2.4 and x3.2 faster (``RUN/retime/``), so the sidecars say
    which it was."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    if not first:
        return None

    def number(key, kind=int):
        try:
            return kind(first[key])
        except (KeyError, ValueError):
            return None
    mhz = number("cpu MHz", float)
    return {"vendor": first.get("vendor_id"), "family": number("cpu family"), "model": number("model"),
            "stepping": number("stepping"), "mhz": None if mhz is None else round(mhz), "cache": first.get("cache size")}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Git state, package versions and hardware of this process, as plain JSON types."""
    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    # A tree copied to another machine (a GPU box) may carry no .git or a stale one: there the
    # sender's DECOMP_GIT_SHA names the commit that really runs, and the local git state is moot.
    sender_sha = os.environ.get("DECOMP_GIT_SHA") or None
    sha, dirty = (sender_sha, None) if sender_sha else (STARTED_ON or git_state())
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        # "AMD EPYC" names several generations: the vector ISA torch uses tells them apart
        # (batch-1 speed-ups of many small convs differ by 2-3x between an AVX2 and an AVX-512 one)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_identity": cpu_identity(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def write_sidecar(
    artifact: str | os.PathLike,
    *,
    command: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<artifact>.json`` next to ``artifact``: how it was made.

    ``command`` defaults to this process's command line; ``extra`` (seeds, dataset checksum,
    wall time per stage, settings) is merged in under its own keys.
    """
    artifact = Path(artifact)
    info = {
        "artifact": artifact.name,
        "command": command if command is not None else " ".join([Path(sys.executable).name, *sys.argv]),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **environment_info(),
        **dict(extra or {}),
    }
    sidecar = artifact.with_name(artifact.name + ".json")
    atomic_write_text(sidecar, json.dumps(info, indent=2, sort_keys=False, default=str) + "\n")
    return sidecar


def write_artifacts(texts: Mapping[str | os.PathLike, str], *, extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Write each text to its path atomically, each with its sidecar (:func:`write_sidecar`)."""
    paths = []
    for path, text in texts.items():
        paths.append(atomic_write_text(path, text))
        write_sidecar(path, extra=extra)
    return paths
