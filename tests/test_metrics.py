"""Metrics of an accuracy matrix, checked on a hand-worked 3-task example."""
import numpy as np
import pytest

from clreg.train import metrics

A = np.array([[0.9, 0.1, 0.2],
              [0.8, 0.95, 0.1],
              [0.7, 0.85, 0.99]])


def test_summary_of_a_hand_worked_matrix():
    s = metrics.summary(A)
    assert s["average_accuracy"] == pytest.approx((0.7 + 0.85 + 0.99) / 3)
    assert s["average_seen"] == pytest.approx([0.9, 0.875, (0.7 + 0.85 + 0.99) / 3])
    assert s["forgetting"] == pytest.approx([0.2, 0.1])  # max(0.9, 0.8) − 0.7; 0.95 − 0.85
    assert s["bwt"] == pytest.approx(((0.7 - 0.9) + (0.85 - 0.95)) / 2)


def test_mean_and_stderr():
    mean, se = metrics.mean_and_stderr([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1.0 / np.sqrt(3))
