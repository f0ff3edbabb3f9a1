"""Data and evaluation for the digits experiment. FROZEN: agents must not change this file.

The loop hashes this file every cycle; a cycle that changes it is recorded as invalid.
It owns the two things that make results comparable across cycles:

- the data: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes, no download),
  split once into train/val with a fixed seed and standardized with train statistics;
- the metric: accuracy and cross-entropy on the held-out val split, whose labels the
  training code never sees.

Usage:
    from prepare import load_train, load_val_inputs   # in train.py
    trial.report(epoch, **score_val(model_scores))    # in train.py: the validation curve
    python prepare.py evaluate                        # after train.py (eval_cmd)
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# ---------------------------------------------------------------------------- constants

NUM_FEATURES = 64  # 8x8 pixels, grey levels 0..16, flattened
NUM_CLASSES = 10  # digits 0-9
VAL_FRACTION = 0.2  # of 1,797 images: 360 held out for validation, 1,437 for training
SPLIT_SEED = 4  # fixes which images are held out; changing it makes results incomparable
PREDICTIONS_FILE = "val_scores.npy"  # float array (num_val, NUM_CLASSES) written by train.py
PROB_TOLERANCE = 1e-3  # rows summing to 1 within this are read as probabilities, else logits
LOG_FLOOR = 1e-12  # probabilities are clipped to this before log (a 0 would be an infinite loss)


# ---------------------------------------------------------------------------- data


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_val, y_train, y_val), features standardized with train mean/std."""
    X, y = load_digits(return_X_y=True)  # X: (1797, 64) float64 in 0..16, y: (1797,) int
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=VAL_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0  # border pixels that are always 0 in train: leave them at 0
    X_train = ((X_train - mean) / std).astype(np.float32)
    X_val = ((X_val - mean) / std).astype(np.float32)
    return X_train, X_val, y_train.astype(np.int64), y_val.astype(np.int64)


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """Training data: X (1437, 64) float32 standardized, y (1437,) int64 in 0..9."""
    X_train, _, y_train, _ = _split()
    return X_train, y_train


def load_val_inputs() -> np.ndarray:
    """Validation features only, X (360, 64) float32; predict these, save PREDICTIONS_FILE."""
    _, X_val, _, _ = _split()
    return X_val


# ---------------------------------------------------------------------------- evaluation


def _checkpoint_dir() -> Path:
    # Same rule as ralph_ml.trial.checkpoint_dir(), without creating the folder.
    return Path(os.environ.get("RALPH_CHECKPOINT_DIR") or "checkpoints")


def score(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """val_accuracy (fraction correct) and val_loss (mean cross-entropy, nats).

    ``scores`` are logits, or class probabilities when every row is non-negative and sums
    to 1. Non-finite scores (a diverged model) give NaN for both metrics.
    """
    scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        return {"val_accuracy": float("nan"), "val_loss": float("nan")}
    is_prob = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=PROB_TOLERANCE))
    if is_prob:
        log_probs = np.log(np.clip(scores, LOG_FLOOR, None))
    else:
        shifted = scores - scores.max(axis=1, keepdims=True)  # log-softmax, numerically stable
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    accuracy = (scores.argmax(axis=1) == labels).mean()
    return {"val_accuracy": float(accuracy), "val_loss": float(loss)}


def _shape_problem(scores: np.ndarray, expected: tuple[int, int]) -> str | None:
    if scores.shape == expected and np.issubdtype(scores.dtype, np.number):
        return None
    return (
        f"has shape {scores.shape} and dtype {scores.dtype}; expected a numeric array of shape "
        f"{expected}: one row of {NUM_CLASSES} class scores per image of load_val_inputs(), in "
        "the same order."
    )


@functools.lru_cache(maxsize=1)
def _val_labels() -> np.ndarray:
    labels = _split()[3]
    labels.setflags(write=False)
    return labels


def score_val(scores: np.ndarray) -> dict[str, float]:
    """val_accuracy and val_loss of scores for load_val_inputs(), to report while training.

    train.py calls it each epoch and passes the result to ``trial.report``, so the pruner
    and the analysis see the validation curve while the labels stay in this file. The
    cycle's result is still what ``python prepare.py evaluate`` scores from the saved
    predictions.
    """
    scores = np.asarray(scores)
    labels = _val_labels()
    problem = _shape_problem(scores, (len(labels), NUM_CLASSES))
    if problem:
        raise ValueError(f"score_val: the scores {problem}")
    return score(scores, labels)


def evaluate() -> int:
    """Score the predictions train.py saved; merge them into metrics.json. Returns exit code."""
    from ralph_ml import trial

    _, _, _, y_val = _split()
    path = _checkpoint_dir() / PREDICTIONS_FILE
    expected = (len(y_val), NUM_CLASSES)
    if not path.is_file():
        print(
            f"prepare.py evaluate: no predictions at {path}. train.py must save the val scores "
            f"(logits or probabilities, shape {expected}) there: "
            f"np.save(trial.checkpoint_dir() / '{PREDICTIONS_FILE}', scores)",
            file=sys.stderr,
        )
        return 1
    try:
        scores = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        print(f"prepare.py evaluate: {path} is not a readable .npy array ({exc}).", file=sys.stderr)
        return 1
    problem = _shape_problem(scores, expected)
    if problem:
        print(f"prepare.py evaluate: {path} {problem}", file=sys.stderr)
        return 1
    metrics = score(scores, y_val)
    trial.log_metrics(**metrics)
    print("---")
    for name, value in metrics.items():
        print(f"{name}: {value:.6f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["evaluate"]:
        print("usage: python prepare.py evaluate", file=sys.stderr)
        sys.exit(2)
    sys.exit(evaluate())
