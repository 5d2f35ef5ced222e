"""What data-parallel fine-tuning gains on this machine: images/s with 1 and with N processes.

    python scripts/measure_scaling.py            # 1 process x 1 thread, 1 x 2 threads, 2 x 1 thread

Each setting is a fresh ``torchrun --nproc_per_node P`` (``OMP_NUM_THREADS=T``) of this module's
worker: a VGG16-BN at 1/8 width (random init: only the speed is measured), decomposed
(Tucker-2 + SVD at 1/3, on rank 0, broadcast), fine-tuned on the embedded CIFAR-10 subset for ``--epochs`` epochs at the
same global batch; the throughput is the training images of the last epoch over its wall time
(the first epochs warm up). The parent writes ``--out``/``scaling.{csv,md,png}`` with sidecars.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["SETTINGS", "worker", "measure", "main"]

SETTINGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)
_NOTE = ("shared machine with 2 CPU cores (another long CPU job ran beside these measurements); "
         "2 processes x 1 thread use the same 2 cores as 1 process x 2 threads")


def worker(out: Path, epochs: int, batch_size: int, images: int) -> None:
    """One run under torchrun: decompose once, fine-tune data-parallel, rank 0 writes ``out``."""
    import torch

    from decomp.experiments import distributed
    from decomp.experiments.data import load_cifar10
    from decomp.experiments.reproduce import leave_out, subset
    from decomp.experiments.train import TrainConfig, train
    from decomp.experiments.zoo import ModelConfig
    from decomp.model import build_decomposed, decompose

    distributed.init_from_env()
    try:
        with distributed.main_first():
            data = load_cifar10(None)
        ft = subset(data.train, images, seed=0)
        torch.manual_seed(0)
        base = ModelConfig(name="vgg16_bn", width=0.125).build()  # random init: throughput only
        shared = None
        if distributed.is_main():
            dec, report = decompose(base, method={"conv": "tucker2", "linear": "svd"}, rank=1 / 3,
                                    overrides=leave_out(base), input_shape=(1, 3, 32, 32))
            shared = (report.to_records(), dec.state_dict())
        records, state = distributed.broadcast_object(shared)
        model = build_decomposed(base, records)
        model.load_state_dict(state)
        start = time.perf_counter()
        res = train(model, ft, TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.04, warmup_frac=0.1),
                    progress=False)
        wall = time.perf_counter() - start
        last = res.history[-1]
        if distributed.is_main():
            out.write_text(json.dumps({
                "processes": distributed.world_size(), "threads": torch.get_num_threads(),
                "images_per_epoch": last["steps"] * batch_size, "last_epoch_s": last["seconds"],
                "images_per_s": last["steps"] * batch_size / last["seconds"], "train_wall_s": wall,
                "history": res.history}))
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(processes: int, threads: int, *, epochs: int, batch_size: int, images: int) -> dict:
    """One fresh torchrun of :func:`worker`; its figures plus the launcher's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "decomp.experiments.scaling",
               "--worker", str(out), "--epochs", str(epochs), "--batch-size", str(batch_size), "--images", str(images)]
        start, load = time.perf_counter(), os.getloadavg()  # how busy the shared machine was
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
        return {**json.loads(out.read_text()), "launch_wall_s": time.perf_counter() - start,
                "load_average_1_5_15_before": load, "load_average_1_5_15_after": os.getloadavg()}


def _table(rows: list[dict]) -> tuple[str, str]:
    base = rows[0]["images_per_s"]
    header = ["processes", "threads_per_process", "images_per_s", "speedup_vs_1x1", "last_epoch_s", "launch_wall_s"]
    csv_lines = [",".join(header)]
    md = ["| processes | threads each | images/s | vs 1 process x 1 thread | last epoch (s) |", "|---|---|---|---|---|"]
    for r in rows:
        speedup = r["images_per_s"] / base
        csv_lines.append(f"{r['processes']},{r['threads']},{r['images_per_s']:.1f},{speedup:.3f},"
                         f"{r['last_epoch_s']:.2f},{r['launch_wall_s']:.1f}")
        md.append(f"| {r['processes']} | {r['threads']} | {r['images_per_s']:.1f} | x{speedup:.2f} | {r['last_epoch_s']:.2f} |")
    return "\n".join(csv_lines) + "\n", "\n".join(md) + "\n"


def _figure(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [f"{r['processes']} proc x {r['threads']} thr" for r in rows]
    ax.bar(labels, [r["images_per_s"] for r in rows], color=["tab:grey", "tab:blue", "tab:orange"][:len(rows)])
    ax.set_ylabel("fine-tuning images/s")
    ax.set_title("VGG16-BN w1/8, Tucker-2+SVD 1/3, CPU (gloo)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main(argv=None) -> None:
    from decomp.cli._config import ArgumentParser, check_output

    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/scaling"))
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per setting; the last one is timed")
    p.add_argument("--batch-size", type=int, default=128, help="global images per step")
    p.add_argument("--images", type=int, default=2560, help="fine-tuning images (a seeded subset)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag, value, low in (("--epochs", a.epochs, 1), ("--batch-size", a.batch_size, 2), ("--images", a.images, 1)):
        if value < low:
            p.error(f"argument {flag}: {value}; allowed: an int >= {low}")
    if a.batch_size % 2 or a.images < a.batch_size:
        p.error(f"argument --batch-size: {a.batch_size}; allowed: an even number (2 processes) <= --images ({a.images})")
    if a.worker is not None:
        return worker(a.worker, a.epochs, a.batch_size, a.images)
    check_output(p, "--out", a.out, folder=True)
    from decomp.experiments.runinfo import atomic_write_bytes, atomic_write_text, write_sidecar

    start = time.perf_counter()
    rows = [measure(procs, threads, epochs=a.epochs, batch_size=a.batch_size, images=a.images)
            for procs, threads in SETTINGS]
    csv_text, md = _table(rows)
    md = ("# Data-parallel fine-tuning throughput on the CPU (gloo)\n\n" + md
          + f"\nVGG16-BN at 1/8 width decomposed (Tucker-2 + SVD, 1/3), global batch {a.batch_size}, "
          f"{a.images} images of the embedded CIFAR-10 subset, the last of {a.epochs} epochs timed. {_NOTE}.\n")
    extra = {"settings": [list(s) for s in SETTINGS], "runs": rows, "machine_note": _NOTE,
             "epochs": a.epochs, "batch_size": a.batch_size, "images": a.images, "total_s": time.perf_counter() - start}
    for name, write in (("scaling.csv", lambda path: atomic_write_text(path, csv_text)),
                        ("scaling.md", lambda path: atomic_write_text(path, md)),
                        ("scaling.png", lambda path: atomic_write_bytes(path, _figure(rows)))):
        write(a.out / name)
        write_sidecar(a.out / name, extra=extra)


if __name__ == "__main__":
    main()
