"""Measuring layers: parameters, multiply-accumulates (MACs) and forward latency.

Units: a MAC is one multiply-accumulate; FLOPs = 2 * MACs. Every counter here returns MACs.
Times are in seconds.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device: the
count is exact for grouped and depthwise convolutions and costs no arithmetic, so it can be
used inside :func:`decomp.decompose` for every layer of a large model.
"""

from __future__ import annotations

import copy
import time
import timeit
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "count_macs_thop", "Timing", "time_forward",
           "time_interleaved", "Speedup", "paired_speedups"]


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(
            f"input_shape must be a sequence of ints such as (1, 3, 224, 224); got {input_shape!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be non-empty with every entry >= 1; got {input_shape!r}")
    return shape


def meta_clone(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers live on ``meta`` (no weight copy).

    Shared parameters and modules stay shared in the copy. (``torch.func.functional_call`` with
    meta stand-ins is not used: with a module registered under two names it leaves meta tensors
    behind in the original, as of torch 2.14.)
    """
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                   requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device="meta")
    return copy.deepcopy(module, memo)


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on an input of ``input_shape``.

    ``input_shape`` includes the batch dimension, e.g. ``(1, 3, 224, 224)``. The forward runs
    on ``meta`` stand-ins for the weights: no arithmetic, and the module itself is not touched.
    """
    shape = _check_shape(input_shape)
    clone = meta_clone(module)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    x = torch.empty(shape, device="meta", dtype=dtype)
    with FlopCounterMode(display=False) as counter:
        clone(x)
    flops = counter.get_total_flops()
    return flops // 2


# --- cross-check counter -------------------------------------------------------------------------

def count_macs_thop(module: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass as counted by ``thop.profile``: an independent cross-check.

    thop's rules (thop 0.1.1): a ``ConvNd`` counts ``out.numel() * in_channels/groups * kh*kw``
    (exact for grouped and depthwise convs, the bias not counted); a ``Linear`` counts
    ``out.numel() * in_features`` (bias not counted). For a module made only of convs and Linears
    this is exactly :func:`count_macs`. thop also counts BatchNorm, pooling and activations by its
    own conventions, where ``FlopCounterMode`` counts nothing, so the two differ on whole models.
    thop runs on a ``meta`` copy: ``module`` is neither touched nor computed on.
    """
    with warnings.catch_warnings():  # thop 0.1.1 imports distutils' deprecated LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        import thop  # optional dependency (extras "test" and "bench")

    shape = _check_shape(input_shape)
    clone = meta_clone(module)
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    x = torch.empty(shape, device="meta", dtype=dtype)
    macs, _params = thop.profile(clone, inputs=(x,), verbose=False)
    return int(round(float(macs)))


# --- timing --------------------------------------------------------------------------------------

# Timers for CPU timing. On CUDA the Timer's own accelerator-synchronising timer is used.
CLOCKS = {"wall": timeit.default_timer, "thread_cpu": time.thread_time}

@dataclass(frozen=True)
class Timing:
    """Latency of one forward pass, in seconds, from ``torch.utils.benchmark`` replicates.

    ``times`` holds every replicate (each the mean over ``number_per_run`` calls), so results from
    several rounds can be pooled with :meth:`merge`.
    """

    median: float        # s per forward
    iqr: float           # s, interquartile range of the replicates
    mean: float          # s
    runs: int            # number of replicates (blocks)
    number_per_run: int  # forward calls per replicate
    threads: int         # torch intra-op threads during the measurement
    device: str          # "cpu" or "cuda:0"
    channels_last: bool  # memory format of module and input
    clock: str = "wall"  # "wall" (elapsed) or "thread_cpu" (CPU time of the calling thread)
    times: tuple[float, ...] = field(repr=False, default=())

    @property
    def rel_iqr(self) -> float:
        """IQR / median: the spread as a fraction."""
        return self.iqr / self.median if self.median > 0 else float("nan")

    def merge(self, other: Timing) -> Timing:
        """Pool the replicates of two measurements of the same thing (e.g. interleaved rounds)."""
        settings = ("threads", "device", "channels_last", "clock")
        if any(getattr(self, k) != getattr(other, k) for k in settings):
            raise ValueError(f"can only merge timings with equal {settings}; got {self} and {other}")
        return _timing_from(self.times + other.times, number_per_run=self.number_per_run,
                            threads=self.threads, device=self.device,
                            channels_last=self.channels_last, clock=self.clock)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "iqr_s": self.iqr, "mean_s": self.mean, "runs": self.runs,
                "number_per_run": self.number_per_run, "threads": self.threads,
                "device": self.device, "channels_last": self.channels_last, "clock": self.clock}


def _timing_from(times, *, number_per_run, threads, device, channels_last, clock) -> Timing:
    t = torch.tensor(list(times), dtype=torch.float64)
    q1, med, q3 = (float(v) for v in torch.quantile(t, torch.tensor([0.25, 0.5, 0.75],
                                                                     dtype=torch.float64)))
    return Timing(median=med, iqr=q3 - q1, mean=float(t.mean()), runs=len(times),
                  number_per_run=number_per_run, threads=threads, device=device,
                  channels_last=channels_last, clock=clock, times=tuple(float(v) for v in times))


def _module_device(module: nn.Module) -> torch.device:
    p = next(iter([*module.parameters(), *module.buffers()]), None)
    return p.device if p is not None else torch.device("cpu")


def time_forward(
    module: nn.Module,
    input: torch.Tensor,
    *,
    threads: int | None = None,
    min_run_time: float = 0.2,
    channels_last: bool = False,
    warmup: int = 2,
    min_runs: int = 5,
    clock: str = "wall",
) -> Timing:
    """Median latency of ``module(input)`` with ``eval()``, ``inference_mode`` and fixed threads.

    ``threads``: torch intra-op threads during the measurement (default: the current
    ``torch.get_num_threads()``), set through ``Timer(num_threads=...)`` and recorded.
    ``min_run_time`` (s) goes to ``Timer.blocked_autorange``; replicates are added until there
    are at least ``min_runs``. ``channels_last`` is the layout of the timing, weights and input
    alike: NCHW (``False``) or channels_last (``True``). It converts a *copy* of the input, and
    the module in place (``module.to(memory_format=...)``; a no-op on Linear weights): a conv
    runs channels_last when its weight *or* its input is, so a model left channels_last by its
    training would otherwise be timed channels_last on an NCHW input. ``warmup`` untimed
    calls come first (oneDNN picks and caches its kernels on the first call). On CUDA the Timer's
    default timer calls ``torch.accelerator.synchronize()`` around every block; on CPU the plain
    ``timeit.default_timer`` is used so that a present-but-unused GPU adds no synchronisation.
    ``clock="thread_cpu"`` (CPU, ``threads=1`` only) times with ``time.thread_time``, the CPU
    time of the calling thread, which runs all of the work at one thread: on a machine shared
    with other jobs it leaves out the time the thread waits for a core, which wall-clock time
    does not. ``module`` is left in eval mode.
    """
    if threads is None:
        threads = torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None; got {threads!r}")
    if min_run_time <= 0:
        raise ValueError(f"min_run_time must be > 0 seconds; got {min_run_time!r}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}; got {clock!r}")
    device = _module_device(module)
    if clock == "thread_cpu" and (device.type != "cpu" or threads != 1):
        raise ValueError(f"clock='thread_cpu' needs a CPU module and threads=1; got device "
                         f"{device} and threads={threads}")
    if input.device != device:
        raise ValueError(f"input is on {input.device} but the module is on {device}; "
                         "move both to one device")
    module.eval()
    if channels_last:
        if input.dim() != 4:
            raise ValueError(f"channels_last needs a 4-D (N, C, H, W) input; got shape "
                             f"{tuple(input.shape)}")
        module.to(memory_format=torch.channels_last)
        input = input.contiguous(memory_format=torch.channels_last)
    else:
        module.to(memory_format=torch.contiguous_format)
        input = input.contiguous()
    # Imported here, not at module level: torch.utils.benchmark pulls in torch.utils.cpp_extension,
    # which logs a warning about CUDA_HOME at import on machines without CUDA, and
    # `import decomp` must print nothing.
    from torch.utils.benchmark import Timer
    from torch.utils.benchmark.utils import common
    from torch.utils.benchmark.utils.timer import timer

    timer_fn = timer if device.type != "cpu" else CLOCKS[clock]
    bench = Timer(stmt="module(x)", globals={"module": module, "x": input},
                  num_threads=threads, timer=timer_fn)
    with torch.inference_mode():
        with common.set_torch_threads(threads):
            for _ in range(warmup):
                module(input)
        m = bench.blocked_autorange(min_run_time=min_run_time)
        times = list(m.times)
        while len(times) < min_runs:
            times.append(bench.timeit(m.number_per_run).times[0])
    return _timing_from(times, number_per_run=m.number_per_run, threads=threads,
                        device=str(device) if device.type == "cpu" else f"{device.type}:{device.index or 0}",
                        channels_last=channels_last, clock=clock)


def time_interleaved(
    modules: Mapping[str, nn.Module],
    input: torch.Tensor,
    *,
    rounds: int = 3,
    min_run_time: float = 0.2,
    channels_last: bool | Mapping[str, bool] = False,
    warmup: int = 2,
    min_runs: int = 6,
    threads: int | None = None,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Time several modules on one input in alternating rounds (A B C A B C ...) and pool them.

    Machine noise (other processes, frequency changes) then hits every module alike, which is
    what a speedup ratio needs. Each round gives each module ``min_run_time / rounds`` seconds
    and at least ``ceil(min_runs / rounds)`` replicates; warm-up calls run in the first round
    only. ``channels_last`` is one flag for all, or a mapping name -> flag. Other settings as in
    :func:`time_forward`, the same for every module.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be an int >= 1; got {rounds!r}")
    result: dict[str, Timing] = {}
    for r in range(rounds):
        for name, module in modules.items():
            last = channels_last.get(name, False) if isinstance(channels_last, Mapping) else channels_last
            t = time_forward(module, input, threads=threads, min_run_time=min_run_time / rounds,
                             channels_last=last, warmup=warmup if r == 0 else 0,
                             min_runs=-(-min_runs // rounds), clock=clock)
            result[name] = result[name].merge(t) if name in result else t
    return result


@dataclass(frozen=True)
class Speedup:
    """A speed-up over a reference from paired rounds: per round, the reference's median time
    over this module's, both timed back to back; the median and quartiles over the rounds."""

    median: float
    q1: float
    q3: float
    rounds: int
    seconds: float            # this module's median time over the rounds (s per forward)
    reference_seconds: float  # the reference's
    ratios: tuple[float, ...] = field(repr=False, default=())

    @property
    def rel_iqr(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"speedup": self.median, "q1": self.q1, "q3": self.q3, "rounds": self.rounds, "rel_iqr": self.rel_iqr,
                "seconds": self.seconds, "reference_seconds": self.reference_seconds}


def paired_speedups(
    modules: Mapping[str, nn.Module],
    input: torch.Tensor,
    reference: str,
    *,
    rounds: int = 16,
    block_s: float = 0.1,
    threads: int | None = None,
    clock: str = "wall",
    warmup: int = 2,
    min_runs: int = 3,
    channels_last: bool = False,
) -> dict[str, Speedup]:
    """Speed-up of every module over ``modules[reference]``, from ``rounds`` short rounds.

    Pooling all replicates of interleaved rounds (:func:`time_interleaved`) and dividing the
    medians lets a load change of a few seconds on a shared machine move one model's median and
    not the other's: the same CIFAR VGG16 pair timed x2.5 and x3.5 a minute apart that way.
    Here each round times every module for ``block_s`` seconds back to back, in alternating
    order (A B C, then C B A: a drift within a round favours none), and yields one ratio per
    module; the median ratio over the rounds is robust to rounds spoilt by a burst of load.
    ``channels_last``: every module timed in that layout (:func:`time_forward`).
    """
    if reference not in modules:
        raise ValueError(f"reference must be one of {list(modules)}; got {reference!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1; got {rounds!r}")
    names = list(modules)
    ratios: dict[str, list[float]] = {n: [] for n in names if n != reference}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        medians = {n: time_forward(modules[n], input, threads=threads, min_run_time=block_s,
                                   warmup=warmup if r == 0 else 0, min_runs=min_runs, clock=clock,
                                   channels_last=channels_last).median
                   for n in order}
        for n in names:
            times[n].append(medians[n])
        for n in ratios:
            ratios[n].append(medians[reference] / medians[n])
    quartiles = lambda v: [float(q) for q in torch.quantile(torch.tensor(v, dtype=torch.float64),  # noqa: E731
                                                            torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))]
    ref_s = quartiles(times[reference])[1]
    out = {}
    for n, values in ratios.items():
        q1, med, q3 = quartiles(values)
        out[n] = Speedup(med, q1, q3, rounds, quartiles(times[n])[1], ref_s, tuple(values))
    return out
