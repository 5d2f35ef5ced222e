"""decomp.measure: two independent MAC counters agree, parameter counts, timing structure."""

import math
import time

import pytest
import torch
from torch import nn

from decomp.experiments.catalog import cases, representative_cases
from decomp.measure import (Timing, count_macs, count_macs_thop, count_params, paired_speedups, time_forward,
                            time_interleaved)


def _counts(case, batch):
    module = case.build(fit=False, device="meta")  # structure only, nothing allocated
    shape = case.layer.batched_shape(batch)
    return count_macs(module, shape), count_macs_thop(module, shape)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.id)
def test_thop_and_flop_counter_agree_on_catalogue(case):
    flop_counter, thop = _counts(case, batch=1)
    assert flop_counter == thop > 0


@pytest.mark.parametrize("case", representative_cases(), ids=lambda c: c.id)
def test_counts_scale_with_batch(case):
    one, _ = _counts(case, 1)
    flop_counter, thop = _counts(case, 32)
    assert flop_counter == thop == 32 * one


def test_counters_disagree_when_thop_rule_differs():
    # The cross-check can fail: thop counts BatchNorm (2 ops per element), FlopCounterMode not.
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert count_macs_thop(m, (1, 3, 8, 8)) != count_macs(m, (1, 3, 8, 8))


def test_thop_does_not_touch_module():
    m = nn.Conv2d(8, 8, 3, groups=4, bias=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert count_macs_thop(m, (2, 8, 6, 6)) == 2 * 8 * 4 * 4 * (8 // 4) * 9
    assert set(m.state_dict()) == set(before) and not hasattr(m, "total_ops")
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize(("module", "shape", "macs"), [
    (nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), (1, 16, 5, 5), 16 * 25 * 9),
    (nn.Conv2d(6, 12, (3, 1), stride=(2, 1)), (2, 6, 9, 4), 2 * 12 * 4 * 4 * 6 * 3),
    (nn.Linear(10, 7), (3, 10), 3 * 70),
])
def test_known_counts(module, shape, macs):
    assert count_macs(module, shape) == count_macs_thop(module, shape) == macs


def test_param_counts_of_decompositions():
    by_id = {c.id: c for c in cases()}
    conv = by_id["vgg16.features.28:tucker2:1/3"]          # 512 -> 512, ranks (171, 171)
    m = conv.build(fit=False, device="meta")
    assert count_params(m) == 512 * 171 + 171 * 171 * 9 + 171 * 512 + 512
    cp = by_id["vgg16.features.28:cp:1/4"]                  # rank 128
    assert count_params(cp.build(fit=False, device="meta")) == 512 * 128 + 128 * 3 * 2 + 128 * 512 + 512
    svd = by_id["alexnet.classifier.6:svd:1/8"]             # 4096 -> 1000, rank 125
    assert count_params(svd.build(fit=False, device="meta")) == 4096 * 125 + 125 * 1000 + 1000
    orig = by_id["vgg16.classifier.0:original"]
    assert count_params(orig.build(device="meta")) == 25088 * 4096 + 4096


def test_time_forward_structure():
    m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    t = time_forward(m, torch.randn(1, 4, 8, 8), threads=1, min_run_time=0.005, min_runs=3)
    assert isinstance(t, Timing)
    assert t.runs >= 3 and len(t.times) == t.runs and t.number_per_run >= 1
    assert t.threads == 1 and t.device == "cpu" and t.channels_last is False
    assert 0 < min(t.times) <= t.median <= max(t.times) < 1.0
    assert t.iqr >= 0 and math.isfinite(t.rel_iqr)
    assert not m.training
    pooled = t.merge(t)
    assert pooled.runs == 2 * t.runs and pooled.median == pytest.approx(t.median)


def test_time_forward_channels_last_and_inference_mode():
    seen = []

    class Probe(nn.Conv2d):
        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), x.is_contiguous(
                memory_format=torch.channels_last), torch.get_num_threads()))
            return super().forward(x)

    x = torch.randn(1, 4, 6, 6)
    t = time_forward(Probe(4, 4, 1), x, threads=1, min_run_time=0.002, channels_last=True,
                     min_runs=2)
    assert t.channels_last and x.is_contiguous()  # the caller's input is not converted
    assert seen and all(s == (True, True, 1) for s in seen)


def test_time_forward_times_one_layout_whatever_the_weights_were_left_in():
    """A conv runs channels_last when its weight is: a model left channels_last by training
    must still be timed NCHW when asked (the reproduction's baseline and variants came from
    different places, and mixed layouts moved a measured speed-up by 25%)."""
    seen = []

    class Probe(nn.Conv2d):
        def forward(self, x):
            out = super().forward(x)
            seen.append((x.is_contiguous(memory_format=torch.channels_last),
                         out.is_contiguous(memory_format=torch.channels_last)))
            return out

    probe = Probe(4, 4, 3).to(memory_format=torch.channels_last)
    x = torch.randn(1, 4, 6, 6)
    time_forward(probe, x, threads=1, min_run_time=0.002, min_runs=2)
    assert seen and all(s == (False, False) for s in seen)
    seen.clear()
    out = paired_speedups({"a": probe, "b": Probe(4, 4, 1)}, x, "a", rounds=2, block_s=0.002, threads=1,
                          channels_last=True)
    assert set(out) == {"b"} and seen and all(s == (True, True) for s in seen)


def test_thread_cpu_clock_excludes_waiting():
    class Sleepy(nn.Module):  # sleeps 2 ms per call: wall clock sees it, thread CPU time not
        def forward(self, x):
            time.sleep(0.002)
            return x

    x = torch.randn(1, 2)
    wall = time_forward(Sleepy(), x, threads=1, min_run_time=0.01, min_runs=3)
    cpu = time_forward(Sleepy(), x, threads=1, min_run_time=0.01, min_runs=3, clock="thread_cpu")
    assert (wall.clock, cpu.clock) == ("wall", "thread_cpu")
    assert wall.median >= 0.002 > 4 * cpu.median
    with pytest.raises(ValueError, match="threads=1"):
        time_forward(Sleepy(), x, threads=2, clock="thread_cpu")
    with pytest.raises(ValueError, match="equal"):
        wall.merge(cpu)


def test_time_interleaved_pools_rounds():
    x = torch.randn(1, 4, 6, 6)
    mods = {"a": nn.Conv2d(4, 4, 3), "b": nn.Conv2d(4, 8, 1)}
    out = time_interleaved(mods, x, rounds=3, min_run_time=0.006, min_runs=6, threads=1,
                           channels_last={"b": True})
    assert set(out) == {"a", "b"} and out["b"].channels_last and not out["a"].channels_last
    assert all(t.runs >= 6 for t in out.values())


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"min_run_time": 0}, {"clock": "tsc"}])
def test_time_forward_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        time_forward(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


class Spin(nn.Module):
    """Burns ``seconds`` of the calling thread's CPU time per call: a known, clock-honest cost."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        return x


def test_paired_speedups_is_the_median_per_round_ratio():
    x = torch.randn(1, 2)
    out = paired_speedups({"slow": Spin(0.002), "fast": Spin(0.001), "same": Spin(0.002)}, x, "slow",
                          rounds=5, block_s=0.01, threads=1, clock="thread_cpu", warmup=0, min_runs=2)
    assert set(out) == {"fast", "same"}
    assert 1.6 < out["fast"].median < 2.4 and 0.8 < out["same"].median < 1.25
    assert out["fast"].rounds == len(out["fast"].ratios) == 5
    assert out["fast"].q1 <= out["fast"].median <= out["fast"].q3
    assert out["fast"].reference_seconds > 1.5 * out["fast"].seconds
    with pytest.raises(ValueError, match="reference"):
        paired_speedups({"a": Spin(0.001)}, x, "b")
    with pytest.raises(ValueError, match="rounds"):
        paired_speedups({"a": Spin(0.001)}, x, "a", rounds=0)
