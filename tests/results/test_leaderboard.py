"""Leaderboard statistics with known answers: Spearman's rho, its permutation p-value, the per-scheme summary."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from qsink.results.leaderboard import average_ranks, correlations, group_summary, permutation_p, spearman


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    x, y = rng.permutation(9), rng.permutation(9)  # no ties: the textbook formula holds
    d2 = float(((x - y) ** 2).sum())
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (9 * (81 - 1)))
    # ties share their mean rank: x ranks (1, 2.5, 2.5, 4)
    assert list(average_ranks([5, 1, 3, 3])) == [4, 1, 2.5, 2.5]
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4])
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_permutation_p_value_is_exact_for_small_n():
    # n = 4, perfectly monotone: 2 of the 24 orderings reach |rho| = 1
    assert permutation_p([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(2 / 24)
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    rho = spearman(x, y)
    exact = sum(abs(spearman(x, p)) >= abs(rho) - 1e-12 for p in itertools.permutations(y)) / 120
    assert permutation_p(x, y) == pytest.approx(exact)
    big = permutation_p(list(range(10)), list(range(10)), n_random=4000)
    assert big < 0.01  # 2 / 10! exactly; a random sample of orderings almost never reaches it


def _cells(n_models):
    rows = []
    for i in range(n_models):
        spike = 10.0 ** (i + 1)
        rows.append({"model": f"m{i}", "scheme": "fp", "handling": "none", "status": "ok", "ppl": 10.0,
                     "spike_magnitude": spike, "kurtosis_max": 3.0 + i})
        rows.append({"model": f"m{i}", "scheme": "w4a4", "handling": "none", "status": "ok", "delta_ppl_pct": float(i * i),
                     "spike_magnitude": spike, "kurtosis_max": 3.0 + (n_models - i), "sqnr_db_mean": 20.0 - i})
        rows.append({"model": f"m{i}", "scheme": "w4a4", "handling": "hadamard", "status": "failed" if i == 0 else "ok",
                     "delta_ppl_pct": 1.0, "spike_magnitude": spike, "kurtosis_max": 3.0})
    return pd.DataFrame(rows)


def test_correlations_per_scheme_and_small_n_note():
    corr = correlations(_cells(5)).set_index(["scheme", "handling"])
    row = corr.loc[("w4a4", "none")]
    assert row["n"] == 5 and row["rho_spike"] == pytest.approx(1.0) and row["rho_kurtosis"] == pytest.approx(-1.0)
    assert row["p_spike"] == pytest.approx(2 / 120) and row["note"] == ""
    had = corr.loc[("w4a4", "hadamard")]
    assert had["n"] == 4 and math.isnan(had["rho_spike"]) and "too few" in had["note"]  # failed cell dropped; constant y
    assert "fp" not in corr.reset_index()["scheme"].tolist()
    small = correlations(_cells(3)).set_index(["scheme", "handling"]).loc[("w4a4", "none")]
    assert small["n"] == 3 and "n=3 < 5" in small["note"]


def test_correlations_never_rank_models_across_texts():
    a, b = _cells(5), _cells(5)
    b["model"] = "other-" + b["model"]
    b["delta_ppl_pct"] = -b["delta_ppl_pct"]  # on the second text the order reverses
    both = pd.concat([a.assign(data="text-a"), b.assign(data="text-b")])
    corr = correlations(both).set_index(["data", "scheme", "handling"])
    assert corr.loc[("text-a", "w4a4", "none"), "rho_spike"] == pytest.approx(1.0)
    assert corr.loc[("text-b", "w4a4", "none"), "rho_spike"] == pytest.approx(-1.0)
    assert corr.loc[("text-a", "w4a4", "none"), "n"] == 5  # ten models, five per text


def test_group_summary():
    g = group_summary(_cells(4), ["scheme", "handling"]).set_index(["scheme", "handling"])
    assert g.loc[("w4a4", "none"), "cells"] == 4
    assert g.loc[("w4a4", "none"), "mean delta_ppl_pct"] == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert g.loc[("w4a4", "none"), "max delta_ppl_pct"] == 9
    assert g.loc[("w4a4", "hadamard"), "cells"] == 3  # the failed cell is not averaged
