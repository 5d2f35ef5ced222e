"""``--control-from``: an earlier run's control is reused only when it was trained exactly alike."""

import csv
import json
import subprocess
from dataclasses import asdict, replace

import pytest

import decomp.experiments.cifar10 as C
import decomp.experiments.cifar10_outputs as O
import decomp.experiments.control_reuse as CR
import decomp.experiments.profiles as P

ROW = {"model": "vgg16_bn_w0.5", "variant": "baseline+ft", "top1_base": 0.8847, "top1_after": 0.8867,
       "delta_points": 0.2, "finetune_epochs": 20, "finetune_images": 50000, "finetune_lr": 0.04,
       "finetune_distill": 0.0, "finetune_s": 5271.5, "cached": False}
DATA = {"sha256": "ff26949c34c4", "train_count": 50000}


def profile(**over):
    return replace(P.PROFILES["cpu_e40"], ft_epochs=20, amp_cpu=False, **over)


def write_run(path, prof, *, sha="0" * 40, rows=(ROW,), data=DATA):
    path.mkdir(parents=True, exist_ok=True)
    with (path / "control.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (path / "control.csv.json").write_text(json.dumps({"git_sha": sha, "profile": asdict(prof), "data": data}))
    return path


def test_missing_or_empty_run_is_refused(tmp_path):
    with pytest.raises(C.UsageError, match=r"argument --control-from: .*no control.csv there"):
        CR.load(tmp_path / "nope")
    (tmp_path / "control.csv").write_text("model,top1_after\n")
    (tmp_path / "control.csv.json").write_text("{}")
    with pytest.raises(C.UsageError, match="no rows"):
        CR.load(tmp_path)


def test_recipe_must_match_field_by_field(tmp_path):
    src = CR.load(write_run(tmp_path / "run", profile()))
    CR.check_recipe(src, profile(variants=("other",), budgets=()))  # variants do not decide the control
    with pytest.raises(C.UsageError, match=r"ft_epochs: 20 there, 12 here"):
        CR.check_recipe(src, replace(profile(), ft_epochs=12))
    with pytest.raises(C.UsageError, match=r"seed: 0 there, 1 here.*ft_distill|ft_distill.*seed"):
        CR.check_recipe(src, replace(profile(), seed=1, ft_distill=0.5))
    with pytest.raises(C.UsageError, match="other data"):
        CR.check_data(src, {"sha256": "somethingelse"})
    CR.check_data(src, DATA)


def test_row_is_checked_against_this_runs_baseline_and_config(tmp_path):
    src = CR.load(write_run(tmp_path / "run", profile()))
    config = P.finetune_config(profile(), P.CONTROL_LR)
    info = {"model": "vgg16_bn_w0.5", "top1": 0.8847}
    row = CR.reused_control(src, info, config, 50000)
    assert row["top1_after"] == pytest.approx(0.8867) and row["cached"] and row["finetune_epochs"] == 20
    assert row["source"] == str(tmp_path / "run") and row["source_git_sha"] == "0" * 40
    with pytest.raises(C.UsageError, match=r"top1_base: 0.8847 there, 0.88 here"):
        CR.reused_control(src, {**info, "top1": 0.88}, config, 50000)
    with pytest.raises(C.UsageError, match="finetune_images: 50000 there, 10000 here"):
        CR.reused_control(src, info, config, 10000)
    with pytest.raises(C.UsageError, match="no control of alexnet_w0.5"):
        CR.reused_control(src, {**info, "model": "alexnet_w0.5"}, config, 50000)
    text = O.control_text([row])
    assert "88.47% -> 88.67%" in text and f"reused from `{tmp_path / 'run'}` (git 0000000)" in text


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_changed_training_code_is_refused(tmp_path):
    repo = tmp_path / "repo"
    for f in CR.TRAINING_CODE:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("# v1\n")
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    src = CR.load(write_run(tmp_path / "run", profile(), sha=_git(repo, "rev-parse", "HEAD")))
    CR.check_code(src, repo)
    (repo / "README.md").write_text("other files may change\n")
    CR.check_code(src, repo)
    (repo / CR.TRAINING_CODE[0]).write_text("# v2\n")
    with pytest.raises(C.UsageError, match="training code changed since"):
        CR.check_code(src, repo)
    unknown = CR.load(write_run(tmp_path / "run2", profile(), sha="f" * 40))
    with pytest.raises(C.UsageError, match="cannot compare the training code"):
        CR.check_code(unknown, repo)


def test_script_refuses_a_control_of_another_recipe_before_any_work(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", replace(P.PROFILES["smoke"], ft_epochs=3))
    monkeypatch.setattr(C, "load_cifar10", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as e:
        C.main(["--profile", "smoke", "--control-from", str(run), "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --control-from" in err and "ft_epochs: 3 there, 1 here" in err
