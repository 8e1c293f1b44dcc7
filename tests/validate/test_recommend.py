"""Recommendations: only rows that keep --min-recovery qualify, the best figure wins, near-ties go to the
smaller checkpoint, and a use case with no figure says why."""

from __future__ import annotations

from tachyon.validate.recommend import recommend


def _row(label, recovery, size, itl, tok_s):
    return {"label": label, "recovery": recovery, "size_bytes": size, "itl_p50_ms": itl, "offline_tok_s": tok_s}


def test_best_qualifying_row_wins():
    rows = [
        _row("original", 100.0, 500, 20.0, 100.0),
        _row("W8A16", 99.5, 300, 15.0, 130.0),
        _row("W4A16", 90.0, 200, 10.0, 200.0),  # fastest, but below 95% recovery
    ]
    latency, throughput = recommend(rows, min_recovery=95.0)
    assert (latency.use_case, latency.choice) == ("latency-bound", "W8A16")
    assert (throughput.use_case, throughput.choice) == ("throughput-bound", "W8A16")
    assert "W4A16" not in latency.reason and "recovery 99.50%" in latency.reason


def test_near_ties_go_to_the_smallest_checkpoint():
    rows = [_row("original", 100.0, 500, 10.0, 100.0), _row("W4A16", 98.0, 200, 10.3, 97.0)]
    latency, throughput = recommend(rows, min_recovery=95.0)
    assert latency.choice == throughput.choice == "W4A16"
    assert "smallest checkpoint" in latency.reason


def test_no_figure_means_no_choice():
    rows = [_row("original", 100.0, 500, None, 100.0), _row("W4A16", None, 200, 9.0, 150.0)]
    latency, throughput = recommend(rows, min_recovery=95.0)
    assert latency.choice is None and "no row with recovery >= 95%" in latency.reason
    assert throughput.choice == "original"  # W4A16's accuracy is unknown, so it does not qualify
