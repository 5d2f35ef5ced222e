"""The regression gate (benchmarks/gate.py): its decision on synthetic samples, its command line
and a save / compare round trip on one small case."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest tests` does not put the repo root on sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks import gate, gate_stats  # noqa: E402

SMALL = "alexnet.classifier.6:svd:1/4"   # 4096 -> 1000 Linear: fast at batch 1


def lognormal(n, median, spread, seed):
    rng = random.Random(seed)
    return [median * rng.lognormvariate(0, spread) for _ in range(n)]


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()  # the gate sets 1 thread
    yield
    torch.set_num_threads(n)


# --- decision ------------------------------------------------------------------------------------

def test_equal_samples_are_not_flagged():
    for seed in range(20):
        v = gate_stats.decide(lognormal(30, 1.0, 0.1, seed), lognormal(30, 1.0, 0.1, 100 + seed))
        assert not v.regressed


def test_slower_by_more_than_min_effect_is_flagged():
    v = gate_stats.decide(lognormal(30, 1.0, 0.1, 0), lognormal(30, 1.3, 0.1, 1))
    assert v.regressed and v.p < 1e-6 and 1.2 < v.effect < 1.4


def test_significant_but_small_shift_is_not_flagged():
    # tight samples: the test alone calls a 5% shift significant; the effect size does not
    v = gate_stats.decide(lognormal(30, 1.0, 0.01, 0), lognormal(30, 1.05, 0.01, 1))
    assert v.p < 1e-6 and not v.regressed


def test_noisier_samples_with_the_same_median_are_not_flagged():
    old = lognormal(30, 1.0, 0.05, 0)
    new = lognormal(30, 1.0, 0.5, 1)  # ten times the spread
    v = gate_stats.decide(old, new)
    assert not v.regressed


def test_faster_is_not_flagged():
    v = gate_stats.decide(lognormal(30, 1.0, 0.1, 0), lognormal(30, 0.5, 0.1, 1))
    assert not v.regressed and v.p > 0.5


def test_min_effect_and_alpha_are_configurable():
    old, new = lognormal(30, 1.0, 0.02, 0), lognormal(30, 1.1, 0.02, 1)
    assert not gate_stats.decide(old, new).regressed
    assert gate_stats.decide(old, new, min_effect=1.05).regressed
    assert not gate_stats.decide(old, new, min_effect=1.05, alpha=1e-30).regressed


@pytest.mark.parametrize("kwargs, match", [
    ({"min_effect": 1.0}, "min_effect must be a finite number > 1"),
    ({"min_effect": float("inf")}, "min_effect"),
    ({"alpha": 0}, r"alpha must be a number in \(0, 1\)"),
    ({"alpha": 1.5}, "alpha"),
])
def test_decide_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gate_stats.decide([1, 1, 1], [1, 1, 1], **kwargs)


def test_decide_rejects_too_few_or_bad_samples():
    with pytest.raises(ValueError, match="old needs at least 3 samples; got 2"):
        gate_stats.decide([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="new samples must be finite and > 0"):
        gate_stats.decide([1, 1, 1], [1, float("nan"), 1])


# --- several yardsticks ---------------------------------------------------------------------------

def test_slower_against_every_yardstick_is_flagged():
    old = {y: lognormal(20, 1.0, 0.05, i) for i, y in enumerate("abc")}
    new = {y: lognormal(20, 1.5, 0.05, 10 + i) for i, y in enumerate("abc")}
    v = gate_stats.decide_all(old, new)
    assert v.regressed and set(v.per) == {"a", "b", "c"} and all(x.regressed for x in v.per.values())


def test_drift_against_one_yardstick_only_is_not_flagged():
    # The load changed kind: the case moved against a yardstick bound differently from it (b),
    # not against the ones bound like it (a, c).
    old = {y: lognormal(20, 1.0, 0.05, i) for i, y in enumerate("abc")}
    new = {"a": lognormal(20, 1.02, 0.05, 10), "b": lognormal(20, 1.4, 0.05, 11),
           "c": lognormal(20, 0.98, 0.05, 12)}
    v = gate_stats.decide_all(old, new)
    assert v.per["b"].regressed and not v.regressed and v.quorum == 3
    # reported: the weakest of the three yardsticks that would carry a verdict
    assert v.yardstick == "c" and v.effect == pytest.approx(v.per["c"].effect)
    assert v.p == max(x.p for x in v.per.values())


def test_a_load_that_moves_two_of_three_references_is_not_a_regression():
    # A memory-streaming job: a memory-bound original (a batch-1 Linear) got 2x slower against
    # the two conv references, not against the gemv that is bound like it.
    old = {y: lognormal(20, 1.0, 0.05, i) for i, y in enumerate("abc")}
    new = {"a": lognormal(20, 2.0, 0.05, 10), "b": lognormal(20, 2.1, 0.05, 11),
           "c": lognormal(20, 1.0, 0.05, 12)}
    v = gate_stats.decide_all(old, new)
    assert v.per["a"].regressed and v.per["b"].regressed and not v.regressed


def test_one_yardstick_slowed_with_the_case_does_not_hide_a_regression():
    # Another job slowed one reference as much as the case's code slowed: against it the case
    # looks unchanged, against the other three it is 1.4x slower.
    old = {y: lognormal(20, 1.0, 0.05, i) for i, y in enumerate("abcd")}
    new = {"a": lognormal(20, 1.4, 0.05, 10), "b": lognormal(20, 1.0, 0.05, 11),
           "c": lognormal(20, 1.45, 0.05, 12), "d": lognormal(20, 1.35, 0.05, 13)}
    v = gate_stats.decide_all(old, new)
    assert v.regressed and v.quorum == 3 and not v.per["b"].regressed
    assert v.yardstick == "d" and v.effect == pytest.approx(v.per["d"].effect)
    # and with no dissent allowed (the gate's second version) it would have been missed
    assert not gate_stats.decide_all(old, new, dissent=0).regressed


def test_quorum_is_every_yardstick_below_four_and_all_but_one_from_four():
    assert [gate_stats.quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 3, 3, 4]
    assert gate_stats.quorum(4, dissent=0) == 4 and gate_stats.quorum(4, dissent=5) == 1
    with pytest.raises(ValueError, match="dissent must be >= 0"):
        gate_stats.quorum(3, dissent=-1)


def test_two_yardsticks_must_both_agree():
    old = {"a": lognormal(20, 1.0, 0.05, 0), "b": lognormal(20, 1.0, 0.05, 1)}
    new = {"a": lognormal(20, 1.5, 0.05, 2), "b": lognormal(20, 1.0, 0.05, 3)}
    v = gate_stats.decide_all(old, new)
    assert v.quorum == 2 and v.per["a"].regressed and not v.regressed


def test_yardsticks_missing_on_one_side_are_ignored_and_none_in_common_is_an_error():
    old = {"a": lognormal(20, 1.0, 0.05, 0), "b": lognormal(20, 1.0, 0.05, 1)}
    v = gate_stats.decide_all(old, {"a": lognormal(20, 1.5, 0.05, 2)})
    assert v.regressed and set(v.per) == {"a"}
    with pytest.raises(ValueError, match="no yardstick in common"):
        gate_stats.decide_all(old, {"z": [1, 1, 1]})


def test_every_case_has_the_references_and_a_decomposition_its_original():
    lid = "alexnet.features.8"
    assert gate.yardsticks(f"{lid}:original", lid) == gate.REFERENCES
    assert gate.yardsticks(f"{lid}:cp:1/4", lid) == (*gate.REFERENCES, f"{lid}:original")
    refs = gate.reference_kernels()
    assert set(refs) == set(gate.REFERENCES) and all(callable(f) for f in refs.values())


def _fake(samples):
    # one yardstick per case; decide_all's rule over several is tested above
    return {"format": gate.FORMAT, "env": {},
            "cases": {cid: {"layer": "l", "method": "m", "ranks": [1],
                            "yardsticks": {"r": s}, "median_s": 1.0} for cid, s in samples.items()}}


def test_flagged_cases_are_remeasured_once_and_confirmed():
    old = lognormal(20, 1.0, 0.05, 0)
    base = _fake({"a": old, "b": old, "c": old})
    run = _fake({"a": old, "b": [x * 2 for x in old], "c": [x * 2 for x in old]})
    calls = []

    def remeasure(ids):  # "b" stays slow, "c" was a fluke
        calls.append(list(ids))
        return {"b": {"yardsticks": {"r": [x * 2 for x in lognormal(20, 1.0, 0.05, 5)]}},
                "c": {"yardsticks": {"r": lognormal(20, 1.0, 0.05, 6)}}}

    verdicts = gate.compare(base, run, min_effect=1.15, alpha=0.01, remeasure=remeasure)
    assert calls == [["b", "c"]]
    assert not verdicts["a"]["flagged_first"] and verdicts["a"]["remeasured"] is None
    assert verdicts["b"]["regressed"] and verdicts["b"]["remeasured"]["flagged"]
    assert verdicts["b"]["pooled"]["flagged"] and len(verdicts["b"]["remeasured"]["samples"]["r"]) == 20
    # "c": pooled, half its samples are 2x slower, yet the re-measurement alone is not slower
    assert verdicts["c"]["flagged_first"] and not verdicts["c"]["remeasured"]["slower"]
    assert not verdicts["c"]["regressed"]


def test_a_slowdown_at_the_threshold_is_judged_on_both_measurements_pooled():
    # A true 1.25x slowdown against a 1.2x threshold: the first measurement reads 1.3x, the
    # re-measurement 1.17x (significantly slower, below the threshold). Pooled: a regression.
    old = lognormal(20, 1.0, 0.02, 0)
    base = _fake({"a": old})
    run = _fake({"a": lognormal(20, 1.3, 0.02, 1)})
    again = {"a": {"yardsticks": {"r": lognormal(20, 1.17, 0.02, 2)}}}
    v = gate.compare(base, run, min_effect=1.2, alpha=0.01, remeasure=lambda ids: again)["a"]
    assert v["flagged_first"] and not v["remeasured"]["flagged"] and v["remeasured"]["slower"]
    assert v["pooled"]["flagged"] and v["regressed"]
    # pooled but unchanged on the second look (1.0x): no regression
    again = {"a": {"yardsticks": {"r": lognormal(20, 1.0, 0.02, 3)}}}
    v = gate.compare(base, run, min_effect=1.2, alpha=0.01, remeasure=lambda ids: again)["a"]
    assert v["flagged_first"] and not v["remeasured"]["slower"] and not v["regressed"]


def test_pool_joins_the_yardsticks_both_measurements_have():
    assert gate_stats.pool({"a": [1, 2], "b": [3]}, {"a": [4], "c": [5]}) == {"a": [1, 2, 4]}


def test_nothing_flagged_means_no_remeasurement():
    old = lognormal(20, 1.0, 0.05, 0)

    def remeasure(ids):
        raise AssertionError("nothing to re-measure")

    verdicts = gate.compare(_fake({"a": old}), _fake({"a": old}), min_effect=1.15, alpha=0.01,
                            remeasure=remeasure)
    assert not verdicts["a"]["regressed"]


def test_regression_line_names_case_figures_and_p():
    case = {"layer": "vgg16.features.28", "method": "tucker2", "ranks": [128, 128]}
    per = {"a": {}, "b": {}, "c": {}, "d": {}}
    v = {"yardstick": "a", "old": 0.2, "new": 0.3, "effect": 1.5, "p": 1e-5, "per_yardstick": per,
         "quorum": 3,
         "pooled": {"yardstick": "vgg16.features.28:original", "old": 0.21, "new": 0.31,
                    "effect": 1.55, "p": 2e-5, "per_yardstick": per, "quorum": 3, "flagged": True}}
    line = gate.regression_line("vgg16.features.28:tucker2:1/4", case, v)
    assert line.startswith("REGRESSION vgg16.features.28:tucker2:1/4")
    for part in ("method tucker2", "layer vgg16.features.28", "rank 128,128", "old 0.2100",
                 "new 0.3100", "x1.55", "ratio to vgg16.features.28:original", "3 of 4 yardsticks",
                 "p=2e-05"):
        assert part in line


def test_env_mismatches_name_the_key():
    assert gate.env_mismatches({"torch": "2.0", "threads": 1}, {"torch": "2.1", "threads": 1}) == [
        "torch: baseline '2.0', now '2.1'"]


# --- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([], "one of the arguments --save --compare is required"),
    (["--save", "a", "--compare", "b"], "not allowed with argument"),
    (["--save", "a", "--rounds", "0"], "--rounds must be an integer > 0; got '0'"),
    (["--save", "a", "--rounds", "2"], "--rounds must be >= 3; got 2"),
    (["--save", "a", "--block-time", "x"], "--block-time must be a number > 0; got 'x'"),
    (["--save", "a", "--min-effect", "0.9"], "--min-effect must be a finite number > 1"),
    (["--save", "a", "--alpha", "2"], r"--alpha must be a number in \(0, 1\)"),
    (["--save", "../x"], "baseline NAME must be letters"),
    (["--save", "a", "--cases", "vgg16.nope:svd:1/4"], "--cases: unknown case id 'vgg16.nope:svd:1/4'"),
    (["--save", "a", "--cases", ","], "--cases needs at least one case id"),
])
def test_argument_errors_exit_2_naming_the_option(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        gate.main([*argv, "--dir", str(tmp_path)])
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_compare_without_baseline_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        gate.main(["--compare", "missing", "--dir", str(tmp_path), "--cases", SMALL])
    assert e.value.code == 2
    assert "no baseline" in capsys.readouterr().err


def test_save_compare_round_trip(capsys, tmp_path):
    opts = ["--dir", str(tmp_path), "--cases", SMALL, "--block-time", "0.002"]
    # 3 rounds: the smallest one-sided Mann-Whitney p for 3 against 3 samples is 1/20 > alpha,
    # so the unchanged compare cannot flag anything whatever the machine does.
    assert gate.main(["--save", "base", "--rounds", "3", *opts]) == 0
    saved = json.loads((tmp_path / "base.json").read_text())
    assert saved["format"] == gate.FORMAT
    assert set(saved["cases"]) == {SMALL, "alexnet.classifier.6:original"}
    assert saved["env"]["threads"] == 1 and saved["env"]["torch"] == torch.__version__
    assert all(len(s) == 3 for c in saved["cases"].values() for s in c["yardsticks"].values())
    assert set(saved["cases"][SMALL]["yardsticks"]) == {*gate.REFERENCES, "alexnet.classifier.6:original"}
    assert gate.main(["--compare", "base", "--rounds", "3", "--json", str(tmp_path / "run.json"), *opts]) == 0
    out = capsys.readouterr()
    assert "0 of 2 cases regressed" in out.out and "warning" not in out.err
    run = json.loads((tmp_path / "run.json").read_text())
    assert set(run["compare"]["verdicts"]) == set(saved["cases"]) and "load_avg" in run

    # A baseline from another torch in which the SVD case's ratios to all its yardsticks were a
    # third of what they are now: a warning, a regression line and exit 1 (5 new rounds against
    # 6 old samples: the smallest one-sided p, 1/462, is below alpha).
    saved["env"]["torch"] = "0.0"
    for cid, c in saved["cases"].items():
        c["yardsticks"] = {y: [x / (3 if cid == SMALL else 1) for x in s * 2]
                           for y, s in c["yardsticks"].items()}
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert gate.main(["--compare", "old", "--rounds", "5", *opts]) == 1
    out = capsys.readouterr()
    assert "warning: environment differs from the baseline (torch: baseline '0.0'" in out.err
    assert f"REGRESSION {SMALL} (method svd" in out.out
