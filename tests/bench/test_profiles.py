"""Profiles: the registry, flag validation, arrival schedules and the sweep's choice of rates."""

from __future__ import annotations

import itertools
import statistics

import pytest

from tachyon.bench.profiles import PROFILES, LoadLevel, ProfileOptions, create_profile, sweep_rates


def levels_of(name: str, options: ProfileOptions, throughputs=()) -> list[LoadLevel]:
    profile, done, levels = create_profile(name, options), list(throughputs), []
    while (level := profile.next_level(done)) is not None:
        levels.append(level)
        done.append(done[-1] * 1.5 if done else 1.0)
    return levels


def test_registry_has_every_profile():
    assert set(PROFILES) == {"synchronous", "concurrent", "throughput", "constant", "poisson", "sweep"}
    assert [lv.label for lv in levels_of("synchronous", ProfileOptions())] == ["synchronous"]
    assert [lv.streams for lv in levels_of("concurrent", ProfileOptions(concurrencies=(2, 8)))] == [2, 8]
    assert levels_of("throughput", ProfileOptions(max_concurrency=5))[0].streams == 5
    assert [lv.rate for lv in levels_of("poisson", ProfileOptions(rates=(1.5, 3.0)))] == [1.5, 3.0]


@pytest.mark.parametrize(
    "name, options, flag",
    [
        ("constant", ProfileOptions(), "--rate"),
        ("poisson", ProfileOptions(), "--rate"),
        ("concurrent", ProfileOptions(), "--concurrency"),
        ("nonsense", ProfileOptions(), "unknown profile"),
    ],
)
def test_missing_flags_are_named(name, options, flag):
    with pytest.raises(ValueError, match=flag):
        create_profile(name, options)


def test_bad_option_values_are_named():
    with pytest.raises(ValueError, match="--rate"):
        ProfileOptions(rates=(0.0,))
    with pytest.raises(ValueError, match="--concurrency"):
        ProfileOptions(concurrencies=(0,))
    with pytest.raises(ValueError, match="--sweep-steps"):
        ProfileOptions(sweep_steps=0)


def test_constant_arrivals_are_evenly_spaced():
    offsets = list(itertools.islice(LoadLevel("constant", rate=4.0).arrival_offsets(), 9))
    assert offsets == pytest.approx([i / 4.0 for i in range(9)])


def test_poisson_arrivals_have_the_rate_and_the_seed_fixes_them():
    level = LoadLevel("poisson", rate=5.0, seed=3)
    offsets = list(itertools.islice(level.arrival_offsets(), 4001))
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert offsets[0] == 0.0
    assert statistics.mean(gaps) == pytest.approx(1 / 5.0, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(1 / 5.0, rel=0.1)  # exponential: stdev equals the mean
    assert list(itertools.islice(level.arrival_offsets(), 50)) == offsets[:50]


def test_sweep_runs_synchronous_throughput_then_increasing_constant_rates():
    profile = create_profile("sweep", ProfileOptions(sweep_steps=4, max_concurrency=16))
    first = profile.next_level([])
    second = profile.next_level([2.0])
    assert (first.kind, second.kind, second.streams) == ("synchronous", "throughput", 16)
    done = [2.0, 12.0]
    rates = []
    while (level := profile.next_level(done)) is not None:
        assert level.kind == "constant" and level.max_concurrency == 16
        rates.append(level.rate)
        done.append(level.rate)
    assert rates == pytest.approx([2.0 + 10.0 * i / 5 for i in range(1, 5)])
    assert all(2.0 < a < b < 12.0 for a, b in itertools.pairwise(rates))


def test_sweep_rates_without_batching_still_increase():
    rates = sweep_rates(3.0, 2.0, 3)  # throughput below synchronous: up to twice synchronous
    assert all(a < b for a, b in itertools.pairwise(rates)) and 3.0 < rates[0] and rates[-1] < 6.0
    with pytest.raises(ValueError, match="synchronous"):
        sweep_rates(0.0, 5.0, 3)


def test_level_round_trips_and_labels():
    for level in (
        LoadLevel("synchronous", streams=1),
        LoadLevel("concurrent", streams=4),
        LoadLevel("poisson", rate=2.5, max_concurrency=8),
    ):
        assert LoadLevel.from_dict(level.to_dict()) == level
    assert LoadLevel("constant", rate=2.5).label == "constant@2.5/s"
