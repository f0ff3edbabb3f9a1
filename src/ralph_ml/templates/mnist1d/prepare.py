"""Data and evaluation for the MNIST-1D experiment. FROZEN: agents must not change this file.

The loop hashes this file every cycle; a cycle that changes it is recorded as invalid.
It owns the two things that make results comparable across cycles:

- the data: MNIST-1D (Greydanus & Kalai, 2020), ten 1-D digit templates padded, scaled,
  translated, sheared and made noisy into signals of length 40. It is *generated* offline
  by the `mnist1d` package with the package's own arguments and seed 42, which reproduce
  the published dataset: 4,000 training signals and 1,000 held-out ones (the published
  test split, used here as the validation split). Generating takes about 1.5 s, so the
  arrays are cached in the data folder ($RALPH_DATA_DIR, else ./data) and reused;
- the metric: accuracy and cross-entropy on the held-out split, whose labels the training
  code never sees. The cached labels are checked against a fixed hash before every use,
  so a changed cache cannot change the score.

Published test accuracies on this split, as a guide: logistic regression ~32%,
MLP ~68%, GRU ~91%, CNN ~94%.

Usage:
    from prepare import load_train, load_val_inputs   # in train.py
    trial.report(epoch, **score_val(model_scores))    # in train.py: the validation curve
    python prepare.py evaluate                        # after train.py (eval_cmd)
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sys
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------- constants

NUM_FEATURES = 40  # samples per signal (mnist1d's final_seq_length)
NUM_CLASSES = 10  # digits 0-9
NUM_SAMPLES = 5000  # generated in all: 4,000 train + 1,000 val (mnist1d's train_split 0.8)
DATA_SEED = 42  # mnist1d's default seed: the published dataset; changing it makes results incomparable
CACHE_FILE = f"mnist1d_n{NUM_SAMPLES}_seed{DATA_SEED}.npz"  # under <data dir>/mnist1d/
# sha256 of the 1,000 val labels as little-endian int64. Labels depend only on numpy's
# legacy RNG stream (stable across numpy versions), not on floating-point details.
VAL_LABELS_SHA256 = "8de99be3ff9dab15ae0dc072c3d6ced7cf6b33d365888ce4a386fc944489452c"
PREDICTIONS_FILE = "val_scores.npy"  # float array (num_val, NUM_CLASSES) written by train.py
PROB_TOLERANCE = 1e-3  # rows summing to 1 within this are read as probabilities, else logits
LOG_FLOOR = 1e-12  # probabilities are clipped to this before log (a 0 would be an infinite loss)

_ARRAYS = ("x_train", "y_train", "x_val", "y_val")


# ---------------------------------------------------------------------------- data


def _data_dir() -> Path:
    # Same rule as ralph_ml.trial.data_dir(): the loop's shared data folder, else ./data.
    return Path(os.environ.get("RALPH_DATA_DIR") or "data")


def _labels_hash(y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(y, dtype="<i8").tobytes()).hexdigest()


def _generate() -> dict[str, np.ndarray]:
    """Build the dataset with mnist1d (about 1.5 s), leaving the global RNGs as they were."""
    from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: only when needed

    args = get_dataset_args()  # the published arguments: 5,000 signals of length 40
    args.num_samples = NUM_SAMPLES
    args.seed = DATA_SEED
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)  # seeds `random` and `np.random` with args.seed
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": data["x"].astype(np.float32),  # (4000, 40), standardized by mnist1d
        "y_train": data["y"].astype(np.int64),  # (4000,)
        "x_val": data["x_test"].astype(np.float32),  # (1000, 40)
        "y_val": data["y_test"].astype(np.int64),  # (1000,)
    }


def _valid(data: dict[str, np.ndarray]) -> bool:
    if set(data) != set(_ARRAYS):
        return False
    num_train = NUM_SAMPLES * 4 // 5
    shapes = {"x_train": (num_train, NUM_FEATURES), "y_train": (num_train,),
              "x_val": (NUM_SAMPLES - num_train, NUM_FEATURES), "y_val": (NUM_SAMPLES - num_train,)}
    if any(data[name].shape != shape for name, shape in shapes.items()):
        return False
    return _labels_hash(data["y_val"]) == VAL_LABELS_SHA256


def _load() -> dict[str, np.ndarray]:
    """The four arrays, from the cache when it is intact, else generated and cached."""
    path = _data_dir() / "mnist1d" / CACHE_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            cached = {name: npz[name] for name in npz.files}
        if _valid(cached):
            return cached
    except (OSError, ValueError, KeyError):
        pass  # missing, half-written or foreign: regenerate
    data = _generate()
    if not _valid(data):
        from importlib.metadata import version

        raise RuntimeError(
            f"mnist1d {version('mnist1d')} generated a dataset whose "
            f"validation labels differ from the published one (sha256 {VAL_LABELS_SHA256[:12]}...), so "
            "scores would not be comparable. Install the version this template was made with: "
            "pip install 'mnist1d==0.0.2.post1'."
        )
    # Write to a temp file and rename: parallel trials never read half a cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """Training data: X (4000, 40) float32 signals, y (4000,) int64 in 0..9."""
    data = _load()
    return data["x_train"], data["y_train"]


def load_val_inputs() -> np.ndarray:
    """Validation signals only, X (1000, 40) float32; predict these, save PREDICTIONS_FILE."""
    return _load()["x_val"]


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
        f"{expected}: one row of {NUM_CLASSES} class scores per signal of load_val_inputs(), in "
        "the same order."
    )


@functools.lru_cache(maxsize=1)
def _val_labels() -> np.ndarray:
    labels = _load()["y_val"]
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

    y_val = _load()["y_val"]
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
