"""Reuse the control of an earlier run whose fine-tuning recipe is this run's (``--control-from``).

The control (the undecomposed baseline fine-tuned exactly like every variant) is the costliest
stage of a run: at 1/2 width on 2 CPU cores it trains 2.2x longer per epoch than a x4-MACs
variant. A run that tries another architecture at the same recipe needs the very same
control, so it may read it from an earlier run's ``control.csv`` instead of training it again,
but only when everything that decides the control's weights is the same: the baseline (its
training settings and its top-1), the fine-tuning settings, the test subset, the data (its
sha256) and the training code (unchanged since the earlier run's git commit). Any difference
is refused with the fields that differ, before any work. The reused row keeps its figures and
says where it came from (``source``, ``source_git_sha``).
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

from decomp.experiments.usage import UsageError, argument_error

__all__ = ["RECIPE_FIELDS", "TRAINING_CODE", "ControlSource", "load", "check_recipe", "check_data", "check_code",
           "reused_control"]

# Profile fields that decide the control's weights and its top-1 (the baseline's training, the
# fine-tuning, the test subset, where it ran). Variants, budgets and timing settings do not.
RECIPE_FIELDS = ("models", "embedded", "epochs", "batch_size", "lr", "ft_epochs", "ft_images", "ft_batch_size",
                 "ft_distill", "amp_cpu", "channels_last", "test_images", "device", "seed")
# The code that decides the control's weights (paths from the repository root): the training
# loop, the profiles and their fine-tuning config, the data pipeline, the model zoo.
TRAINING_CODE = ("decomp/experiments/train.py", "decomp/experiments/profiles.py", "decomp/experiments/data.py",
                 "decomp/experiments/zoo.py")


class ControlSource:
    """An earlier run's control rows and the sidecar of its ``control.csv``."""

    def __init__(self, run: Path, rows: list[dict], sidecar: dict):
        self.run, self.rows, self.sidecar = run, rows, sidecar


def _usage(msg: str) -> UsageError:
    return argument_error("--control-from", msg)


def load(run: str | Path) -> ControlSource:
    """Read ``RUN/control.csv`` and its sidecar; a clear error if either is missing or unreadable."""
    run = Path(run)
    table, side = run / "control.csv", run / "control.csv.json"
    for f in (table, side):
        if not f.is_file():
            raise _usage(f"{run}: no {f.name} there (a run made with --ft-control writes it)")
    try:
        with table.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        sidecar = json.loads(side.read_text())
    except (OSError, ValueError, csv.Error) as e:
        raise _usage(f"{run}: cannot read its control: {e}") from None
    if not rows or "profile" not in sidecar:
        raise _usage(f"{run}: control.csv has no rows or its sidecar no profile")
    return ControlSource(run, rows, sidecar)


def _plain(value):  # tuples as the sidecar's JSON has them (lists)
    return json.loads(json.dumps(value))


def check_recipe(src: ControlSource, prof) -> None:
    """Refuse unless every field of :data:`RECIPE_FIELDS` of ``prof`` (the effective profile,
    after the bf16 fallback) equals the earlier run's."""
    theirs, ours = src.sidecar["profile"], _plain(asdict(prof))
    diff = [f"{f}: {theirs.get(f)!r} there, {ours[f]!r} here" for f in RECIPE_FIELDS if theirs.get(f) != ours[f]]
    if diff:
        raise _usage(f"{src.run} fine-tuned its control another way ({'; '.join(diff)}); "
                     "only a control trained exactly like this run's variants can be reused")


def check_data(src: ControlSource, description: dict) -> None:
    theirs, ours = (src.sidecar.get("data") or {}).get("sha256"), description.get("sha256")
    if not theirs or theirs != ours:
        raise _usage(f"{src.run} was trained on other data (sha256 {theirs!r} there, {ours!r} here)")


def check_code(src: ControlSource, repo: Path) -> None:
    """Refuse if the training code changed since the earlier run's commit (``git diff``, against
    the working tree); where git or the commit is not available, refuse too: nothing to check."""
    sha = src.sidecar.get("git_sha")
    if not sha:
        raise _usage(f"{src.run}: its sidecar names no git commit, so the training code cannot be checked")
    try:
        res = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", sha, "--", *TRAINING_CODE],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise _usage(f"cannot compare the training code with {sha[:12]} ({e})") from None
    if res.returncode == 1:
        raise _usage(f"the training code changed since {src.run} was made at {sha[:12]} "
                     f"(git diff {sha[:12]} -- {' '.join(TRAINING_CODE)})")
    if res.returncode != 0:
        raise _usage(f"cannot compare the training code with {sha[:12]}: {res.stderr.strip() or 'git failed'}")


def _same(a, b) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def reused_control(src: ControlSource, base_info: dict, config, ft_images: int) -> dict:
    """The earlier run's control row for ``base_info["model"]``, checked against this run's
    baseline top-1 and fine-tuning ``config`` (a TrainConfig) on ``ft_images`` images."""
    model = base_info["model"]
    row = next((r for r in src.rows if r.get("model") == model), None)
    if row is None:
        raise _usage(f"{src.run} has no control of {model} (it has {sorted(r.get('model') for r in src.rows)})")
    checks = {"top1_base": (row["top1_base"], base_info["top1"]), "finetune_epochs": (row["finetune_epochs"], config.epochs),
              "finetune_images": (row["finetune_images"], ft_images), "finetune_lr": (row["finetune_lr"], config.lr),
              "finetune_distill": (row.get("finetune_distill") or 0.0, config.distill)}
    diff = [f"{k}: {a} there, {b} here" for k, (a, b) in checks.items() if not _same(a, b)]
    if diff:
        raise _usage(f"{src.run}'s control of {model} differs from this run's ({'; '.join(diff)})")
    return {"model": model, "variant": row["variant"], "top1_base": float(row["top1_base"]),
            "top1_after": float(row["top1_after"]), "delta_points": float(row["delta_points"]),
            "finetune_epochs": int(row["finetune_epochs"]), "finetune_images": int(row["finetune_images"]),
            "finetune_lr": float(row["finetune_lr"]), "finetune_distill": float(row.get("finetune_distill") or 0.0),
            "finetune_s": float(row["finetune_s"]), "cached": True,
            "source": str(row.get("source") or src.run), "source_git_sha": row.get("source_git_sha") or src.sidecar["git_sha"]}
