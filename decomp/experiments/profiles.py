"""Profiles of the CIFAR-10 reproduction: every setting that sizes a run, in one frozen dataclass.

A profile names a cache folder (``.cache/decomp/cifar10/<name>``) whose checkpoints are valid
for exactly its training settings, so a changed field trains anew rather than reusing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from decomp.experiments.reproduce import FINETUNE_LR
from decomp.experiments.train import TrainConfig

__all__ = ["Profile", "PROFILES", "CONTROL_LR", "finetune_config"]


@dataclass(frozen=True)
class Profile:
    """Everything that sizes a run. Units in the comments."""

    name: str
    models: tuple = (("vgg16_bn", 0.25),)  # (model, channel width multiplier) pairs, run in order
    embedded: bool = False           # True: the embedded 5,000 + 1,000 image subset
    epochs: int = 8                  # baseline passes over the training set
    batch_size: int = 512            # baseline images per step
    lr: float = 0.4                  # baseline peak lr per 512 images
    ft_epochs: int = 1               # fine-tuning passes over the fine-tuning subset
    ft_images: int = 10_000          # training images used for fine-tuning (0 = all)
    ft_batch_size: int = 256         # fine-tuning images per step
    ft_distill: float = 0.0          # weight of distillation from the baseline while fine-tuning (0 = off)
    ft_control: bool = False         # also fine-tune the undecomposed baseline alike (control.csv)
    bn_batches: int = 40             # batches of ft_batch_size images to re-estimate BN statistics after decomposing (0 = off)
    variants: tuple = ()             # names of the grid's variants to run (empty = all)
    min_speedup: float | None = None  # keep layers whose decomposition is timed < this much faster at batch 1 (None = off)
    fractions: tuple = (1 / 3, 1 / 4, 1 / 6)  # rank fractions of the channels; first = origin's S/3, T/3
    vbmf: bool = True                # also VBMF ranks (SVD, Tucker-2)
    cp_vbmf: bool = False            # also VBMF ranks for CP
    families: tuple = ()             # variant families of the grid (empty = all of decomp.experiments.reproduce.FAMILIES)
    aware: tuple = ()                # families also run data-aware (decompose(calibration=...)) at the first fraction and VBMF
    budgets: tuple = ()              # whole-model targets run data-aware for each family of `aware`, e.g. ("latency:2",)
    calibration_images: int = 2048   # training images (seeded subset, unaugmented) of the data-aware fits
    commit_baseline: bool = False    # keep the trained baseline in results/cifar10/<name>/ (bf16) and start from it
    test_images: int = 0             # test images for top-1 (0 = all 10,000)
    cpu_batches: tuple = (1, 256)    # images per forward for CPU timing (1 thread, thread CPU clock)
    gpu_batches: tuple = (1, 256)    # images per forward for GPU timing (if CUDA is present)
    min_run_s: float = 1.0           # seconds of timing per model (base, variant) per batch size
    rounds: int = 3                  # interleaved timing rounds
    device: str = "cpu"              # training/eval device: "cpu" or "cuda"
    channels_last: bool = False      # train and fine-tune in channels_last (faster convs on a GPU)
    amp_cpu: bool = False            # bf16 autocast for training steps on the CPU too (decomp.experiments.train.TrainConfig.amp_cpu)
    budget_s: float = 0.0            # start no new variant after this many seconds of run (0 = no limit)
    seed: int = 0                    # model init, data order, augmentation, dropout, subsets
    note: str = ""                   # what this profile leaves out and why (copied into the README)


PROFILES = {
    # Exercises every stage and family (1/3 and VBMF, CP included) in ~1-2 min; accuracy is noise.
    "smoke": Profile(
        "smoke", models=(("vgg16_bn", 0.0625), ("alexnet", 0.0625)), embedded=True, epochs=1,
        batch_size=256, ft_images=1024, ft_batch_size=256, bn_batches=2, fractions=(1 / 3,), cp_vbmf=True,
        aware=("tucker2+svd-all",), budgets=("macs:3",), calibration_images=512,
        cpu_batches=(1, 32), min_run_s=0.06,
        rounds=2, gpu_batches=(1, 32),
    ),
    # 2-core shared CPU (measured idle, 2 threads): VGG16-BN w0.5 trains at ~150 s per epoch, so
    # 10 baseline epochs take ~27 min; a decomposed model fine-tunes at ~100 s per epoch, so
    # 4 epochs per variant (~8 min each with evaluation and timing) fit 11 variants in the
    # remaining ~90 min; budget_s drops the most aggressive ones first if the machine is slower.
    # Width 0.5, not 0.25: at 0.25 the convs are so small that per-call overhead, not MACs,
    # sets the batch-1 latency (Tucker-2 at 1/3: MACs x3.8, measured x1.2; at 0.5: x4.4, x1.9).
    # min_speedup: decompose only layers measured >= 10% faster at batch 1 (clear of timing noise).
    "cpu": Profile(
        "cpu", models=(("vgg16_bn", 0.5),), epochs=10, ft_epochs=4, ft_images=0,
        fractions=(1 / 3, 1 / 4), min_speedup=1.1, budget_s=5400,
        cpu_batches=(1, 256), min_run_s=1.0,
        note="AlexNet is left out: it does not fit beside VGG16-BN in the 2 hours this profile "
             "may take on a 2-core machine. VGG16-BN at 1/2 width, 10 baseline epochs, 4 "
             "fine-tuning epochs per variant, and the 1/6 fractions left out: all to fit 2 hours.",
    ),
    # A well-trained baseline on the 2-core CPU (the accuracy-at-speed comparison): bf16 autocast
    # and channels_last train VGG16-BN w0.5 at ~55 s per epoch (measured 2.4x faster than
    # float32 on an AVX512-BF16 EPYC), so 40 epochs take ~40 min; the gpu run's 40-epoch recipe
    # reached 90% at width 1. Fine-tuning: 4 epochs on all images, variants and control alike.
    # Variants: Tucker-2 + SVD on the whole network, data-free and data-aware at 1/3 and VBMF,
    # and budgeted to x2 / x3 measured CPU batch-1 latency (decomp.Latency, data-aware).
    "cpu_e40": Profile(
        "cpu_e40", models=(("vgg16_bn", 0.5),), epochs=40, ft_epochs=4, ft_images=0,
        fractions=(1 / 3,), channels_last=True, amp_cpu=True, ft_control=True,
        families=("tucker2+svd-all",), aware=("tucker2+svd-all",), budgets=("latency:2", "latency:3"),
        commit_baseline=True,
        cpu_batches=(1, 256), min_run_s=1.0,
        note="VGG16-BN at 1/2 width with a 40-epoch baseline (bf16 autocast on the CPU), the "
             "control fine-tuned like every variant; Tucker-2 + SVD data-free, data-aware and "
             "budgeted to a measured latency.",
    ),
    # One H100/H200 in one command of under 10 minutes: full widths, bf16 autocast and
    # channels_last (decomp.experiments.train), fine-tuning on the whole set. budget_s keeps the run inside
    # a 10-minute command; the aggressive 1/6 settings are the first to go.
    # CPU timing at width 1 is slow at 1 thread, so its large batch is 16 there.
    "gpu": Profile(
        "gpu", models=(("vgg16_bn", 1.0), ("alexnet", 1.0)), epochs=15, ft_epochs=2, ft_images=0,
        ft_batch_size=512, fractions=(1 / 3, 1 / 6), device="cuda", channels_last=True,
        cpu_batches=(1, 16), gpu_batches=(1, 256), min_run_s=0.5, rounds=2, budget_s=480,
        note="Sized for one GPU command of under 10 minutes: 15 baseline epochs, 2 fine-tuning "
             "epochs per variant, fractions 1/3 and 1/6 (and VBMF).",
    ),
}


# The width-1 VGG16-BN on the 2-core CPU, for the raw (before fine-tuning) loss of the
# decompositions at the width the origin's figures are quoted at: at width 0.5 the early convs
# have 32-128 channels and a 1/3 rank of 11-43, which no fit recovers (results/calibration/
# layer_sensitivity.md). Measured 3.5 s per 512-image bf16 step on an AVX512-BF16 EPYC, ~6 min
# per epoch, so 18 epochs take ~1 h 50 min in one session (the cache need not survive); the
# gpu profile's recipe reached 87.95% in 15 epochs and 90.03% in 40 at width 1. Fine-tuning
# the grid at width 1 (~4 epochs x 7 models) does not fit beside it on 2 cores.
PROFILES["cpu_w1"] = replace(
    PROFILES["cpu_e40"], name="cpu_w1", models=(("vgg16_bn", 1.0),), epochs=18,
    note="VGG16-BN at full width with an 18-epoch baseline (bf16 autocast on the CPU), for the raw loss "
         "of the decompositions before any fine-tuning; the fine-tuned grid is sized like cpu_e40's.")


def finetune_config(prof: Profile, lr: float) -> TrainConfig:
    return TrainConfig(epochs=prof.ft_epochs, batch_size=prof.ft_batch_size, lr=lr,
                       warmup_frac=0.1, seed=prof.seed, channels_last=prof.channels_last,
                       distill=prof.ft_distill, amp_cpu=prof.amp_cpu)


CONTROL_LR = FINETUNE_LR["tucker2+svd-all"]  # the Tucker-2 and SVD families' fine-tuning lr
