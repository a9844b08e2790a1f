"""minidl.metrics: top-k accuracy (the lecture's exercise) and the confusion matrix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minidl
from minidl.metrics import accuracy, confusion_matrix, topk_indices

# The lecture's exercise: scores of 5 samples over 7 classes, and the ground truth.
CLASSES = ["Apple", "Bike", "Car", "Cat", "Dog", "Pear", "Plane"]
SCORES = np.array([[15, 10, 2, 5, 20, 8, 1],     # Apple
                   [2, 5, 10, 8, 4, 12, 3],      # Car
                   [12, 2, 1, 6, 4, 5, 9],       # Car
                   [1, 2, 3, 4, 5, 6, 7],        # Plane
                   [7, 6, 5, 4, 3, 2, 1]])       # Bike
TRUTH = np.array([CLASSES.index(c) for c in ["Apple", "Car", "Car", "Plane", "Bike"]])


def test_lecture_exercise_top1_and_top5():
    # top-1: the argmaxes are Dog, Pear, Apple, Plane, Apple -> only sample 4 is right: 1/5.
    # top-5: sample 1 (Apple 2nd), 2 (Car 2nd), 4 (Plane 1st), 5 (Bike 2nd) are in;
    #        sample 3's Car has the lowest score (1), outside the top 5: 4/5.
    assert [CLASSES[i] for i in SCORES.argmax(1)] == ["Dog", "Pear", "Apple", "Plane", "Apple"]
    top1, top5 = accuracy(SCORES, TRUTH, topk=(1, 5))
    assert top1 == pytest.approx(20.0) and top5 == pytest.approx(80.0)
    assert accuracy(minidl.tensor(SCORES.astype(np.float32)), minidl.tensor(TRUTH), topk=1) == 20.0
    onehot = np.eye(7)[TRUTH]
    assert accuracy(SCORES, onehot, topk=(1, 5)) == [20.0, 80.0]
    assert accuracy(SCORES, TRUTH, topk=(7,)) == [100.0]
    np.testing.assert_array_equal(topk_indices(SCORES, 2)[0], [4, 0])


def test_accuracy_matches_the_pytorch_recipe():
    rng = np.random.default_rng(0)
    out = rng.standard_normal((64, 10)).astype(np.float32)
    target = rng.integers(0, 10, 64)
    _, pred = torch.tensor(out).topk(5, 1, True, True)
    correct = pred.t().eq(torch.tensor(target).view(1, -1).expand_as(pred.t()))
    expected = [correct[:k].reshape(-1).float().sum(0).item() * 100.0 / 64 for k in (1, 3, 5)]
    assert accuracy(out, target, topk=(1, 3, 5)) == pytest.approx(expected)


def test_accuracy_ties_go_to_the_lower_index_and_errors():
    scores = np.array([[1.0, 1.0, 0.0]])
    assert accuracy(scores, [0]) == [100.0] and accuracy(scores, [1]) == [0.0]
    assert accuracy(np.array([[3, 250, 7]], np.uint8), [1], topk=1) == 100.0
    with pytest.raises(ValueError, match="k=9"):
        accuracy(SCORES, TRUTH, topk=(9,))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        accuracy(SCORES, TRUTH[:3])


def test_confusion_matrix():
    pred = np.array([0, 1, 1, 2, 2, 2, 0])
    true = np.array([0, 1, 2, 2, 2, 1, 1])
    cm = confusion_matrix(pred, true, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    for t, p in zip(true, pred):
        expected[t, p] += 1  # rows: true class, columns: prediction
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm[1, 0] == 1 and cm[2, 1] == 1
    cm = confusion_matrix(minidl.tensor(SCORES.astype(np.float32)), TRUTH)
    assert cm.shape == (7, 7) and cm.sum() == 5
    assert np.trace(cm) / cm.sum() * 100 == accuracy(SCORES, TRUTH, topk=1)
    assert confusion_matrix([1, 0], [0, 0]).shape == (2, 2)
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix([0, 3], [0, 1], num_classes=3)
