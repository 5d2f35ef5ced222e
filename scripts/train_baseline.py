"""Train a CIFAR-10 baseline (VGG16-BN or AlexNet for 32x32) and write its checkpoint + sidecar.

    python scripts/train_baseline.py --model vgg16 --width 0.25 --epochs 10
    python scripts/train_baseline.py --model vgg16 --width 0.25 --time-steps 100   # time only

Writes ``<out>/<model>_w<width>_e<epochs>_bs<batch>_s<seed>_<data>.pt`` (a :mod:`decomp.experiments.train`
checkpoint: model + optimizer state, TrainConfig, ModelConfig, data description) and its JSON
sidecar, and prints the test accuracy. Rerunning the same command resumes an interrupted run
or, if it finished, only reports. ``--data`` defaults to the project's JPEG archive
(``../shared/data/cifar10-jpeg.tar.gz``) when it is there, else the embedded 5,000 + 1,000
image subset. ``--time-steps N`` times N training steps (after 5 warm-up steps) and the test
pass, prints the extrapolated seconds per epoch as JSON, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from decomp.cli._config import check_output  # noqa: E402
from decomp.experiments.data import Loader, load_cifar10  # noqa: E402
from decomp.experiments.runinfo import write_sidecar  # noqa: E402
from decomp.experiments.train import (  # noqa: E402
    TrainConfig, evaluate, make_optimizer, make_scheduler, train, train_epoch,
)
from decomp.experiments.zoo import ModelConfig, canonical_name  # noqa: E402

SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@dataclass
class ScriptConfig:
    model: str = "vgg16_bn"  # vgg16 | vgg16_bn | alexnet
    width: float = 0.25  # channel multiplier (FC width = round(4096 * width))
    data: str = "auto"  # CIFAR-10 path; "auto" = the shared JPEG archive if present, else "embedded"
    out: Path = Path(".cache/decomp/checkpoints")  # folder for checkpoints and sidecars
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    time_steps: int = 0  # > 0: time this many steps, print seconds per epoch, write nothing
    progress: bool = True  # tqdm bars on stderr (--no-progress hides them)


def _parse(argv: list[str] | None) -> tuple[ScriptConfig, TrainConfig, ModelConfig]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for cfg, skip in ((ScriptConfig(), set()), (TrainConfig(), set()), (ModelConfig(), {"name", "width"})):
        for f in fields(cfg):
            if f.name in skip:
                continue
            default = getattr(cfg, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            elif f.name == "fc_width":
                parser.add_argument(flag, type=int, default=default)
            else:
                parser.add_argument(flag, type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    script = ScriptConfig(**{f.name: args[f.name] for f in fields(ScriptConfig)})
    _check(script, parser)
    tcfg = TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig)})
    mcfg = ModelConfig(name=canonical_name(script.model), width=script.width,
                       **{f.name: args[f.name] for f in fields(ModelConfig) if f.name not in ("name", "width")})
    return script, tcfg, mcfg


def _data_path(data: str) -> str | None:
    if data == "auto":
        return str(SHARED_JPEG) if SHARED_JPEG.is_file() else None
    return None if data == "embedded" else data


def _data_tag(desc: dict) -> str:
    if desc["source_kind"] == "embedded":
        return "subset"
    return desc["sha256"][:8] if desc.get("sha256") else desc["source_kind"]


def time_epoch(model: nn.Module, data, tcfg: TrainConfig, device: str, steps: int, progress: bool) -> dict:
    """Seconds per epoch extrapolated from ``steps`` timed steps, and seconds for the test pass."""
    loader = Loader(data.train, tcfg.batch_size, train=True, device=device, seed=tcfg.seed,
                    pad_mode=tcfg.pad_mode, channels_last=tcfg.channels_last)
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg, len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    train_epoch(model, loader, optimizer, scheduler, criterion, max_steps=5, progress=False)
    cpu = time.process_time()  # CPU seconds of this process: shows how much a shared CPU slowed it
    stats = train_epoch(model, loader, optimizer, scheduler, criterion, amp=tcfg.amp,
                        max_steps=steps, progress=progress)
    cpu = time.process_time() - cpu
    start = time.perf_counter()
    test = evaluate(model, data.test, device=device)
    n = stats["steps"]
    return {
        "steps_timed": n, "s_per_step": stats["seconds"] / n, "cpu_s_per_step": cpu / n,
        "steps_per_epoch": len(loader), "s_per_epoch": stats["seconds"] / n * len(loader),
        "cpu_s_per_epoch": cpu / n * len(loader),
        "s_test_pass": time.perf_counter() - start, "train_loss": stats["loss"],
        "test_accuracy_after": test["accuracy"],
    }


def _check(script: ScriptConfig, parser: argparse.ArgumentParser) -> None:
    """The script's own settings, before the data is read or a step is trained."""
    if script.threads < 0 or script.time_steps < 0:
        parser.error(f"argument --threads / --time-steps: {script.threads} / {script.time_steps}; allowed: ints >= 0")
    if script.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"argument --device: {script.device}: CUDA is not available on this machine; allowed: cpu")
    if script.time_steps == 0:
        check_output(parser, "--out", script.out, folder=True)


def main(argv: list[str] | None = None) -> None:
    script, tcfg, mcfg = _parse(argv)
    if script.threads > 0:
        torch.set_num_threads(script.threads)
    data = load_cifar10(_data_path(script.data))
    torch.manual_seed(tcfg.seed)  # model init
    model = mcfg.build().to(script.device)
    common = {"model": asdict(mcfg), "train": asdict(tcfg), "data": data.description,
              "device": script.device, "torch_threads": torch.get_num_threads()}
    if script.time_steps > 0:
        timing = time_epoch(model, data, tcfg, script.device, script.time_steps, script.progress)
        print(json.dumps({**timing, **common}, indent=1, default=str))
        return
    name = (f"{mcfg.name}_w{mcfg.width:g}_e{tcfg.epochs}_bs{tcfg.batch_size}_s{tcfg.seed}"
            f"_{_data_tag(data.description)}.pt")
    path = script.out / name
    result = train(model, data.train, tcfg, checkpoint=path, test_data=data.test, device=script.device,
                   model_config=mcfg, meta={"data": data.description}, progress=script.progress)
    if result.complete and not result.skipped:
        write_sidecar(path, extra={**common, "test": result.test, "history": result.history,
                                   "train_seconds_this_run": result.elapsed_s,
                                   "resumed_from_epoch": result.start_epoch})
    print(f"{path}: epochs {result.epochs_done}/{tcfg.epochs}, "
          f"test accuracy {result.test['accuracy']:.4f} on {result.test['count']} images "
          f"({data.description['dataset']}), {result.elapsed_s:.0f} s this run"
          + (" (cached)" if result.skipped else ""))


if __name__ == "__main__":
    main()
