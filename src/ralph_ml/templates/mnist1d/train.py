"""Train a classifier on MNIST-1D. MUTABLE: agents improve this file.

Four architecture families, chosen by the `arch` parameter: `logreg` (linear), `mlp`
(two hidden layers), `cnn` (three strided 1-D convolutions) and `gru` (a recurrent net
reading the signal left to right). Runs on one CPU thread in 3-35 s:
`python train.py`, then `python prepare.py evaluate`. Inside the loop, hyperparameters
come from the cycle's params.json (ralph_ml.trial.params); standalone, the DEFAULTS below
(the baseline) are used.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from prepare import NUM_CLASSES, NUM_FEATURES, PREDICTIONS_FILE, load_train, load_val_inputs, score_val
from ralph_ml import trial

# ---------------------------------------------------------------------------- hyperparameters

DEFAULTS = {
    "arch": "mlp",  # logreg | mlp | cnn | gru
    "lr": 3e-3,  # AdamW peak learning rate (cosine decay to 0 over the run)
    "width": 128,  # hidden units (mlp, gru) or channels per conv layer (cnn); unused by logreg
    "dropout": 0.0,  # dropout before the output layer (and between mlp layers)
    "weight_decay": 1e-4,  # AdamW decoupled weight decay
    "epochs": 30,  # passes over the 4,000 training signals
    "batch_size": 128,  # signals per optimizer step
}
NUM_THREADS = 1  # torch CPU threads: more thrash when the 2 cores are shared (measured: 15x slower)
MAX_EPOCHS = 60  # hard cap whatever params say (the search space's top)
MAX_WIDTH = 256  # hard cap on width (the search space's top)
# CPU-seconds of training at most (this process's time.process_time(); one torch thread, so
# about as many seconds of an idle core): the learning-rate schedule ends by then. CPU time,
# not wall time, so a busy machine slows a trial down without changing its result. The
# per-epoch validation passes are not counted.
CPU_BUDGET_S = 30

cfg = trial.params(DEFAULTS)
epochs = min(cfg["epochs"], MAX_EPOCHS)
width = min(cfg["width"], MAX_WIDTH)

torch.set_num_threads(NUM_THREADS)
torch.manual_seed(trial.seed())
np.random.seed(trial.seed())

# ---------------------------------------------------------------------------- data

X_train_np, y_train_np = load_train()  # (4000, 40) float32, (4000,) int64
X_train = torch.from_numpy(X_train_np)
y_train = torch.from_numpy(y_train_np)
X_val = torch.from_numpy(load_val_inputs())  # (1000, 40); labels stay inside prepare.py
num_train = len(X_train)

# ---------------------------------------------------------------------------- models


class CNN(nn.Module):
    """Three strided convolutions (40 -> 19 -> 10 -> 5 samples), then a linear classifier."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 5, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 40)
        return self.head(self.features(x.unsqueeze(1)))  # logits (batch, 10)


class GRU(nn.Module):
    """A one-layer GRU over the 40 samples; the last hidden state is classified."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 40)
        _, h_last = self.gru(x.unsqueeze(-1))  # h_last: (1, batch, hidden)
        return self.head(h_last[0])


def make_model(arch: str, width: int, dropout: float) -> nn.Module:
    if arch == "logreg":
        return nn.Linear(NUM_FEATURES, NUM_CLASSES)
    if arch == "mlp":
        return nn.Sequential(
            nn.Linear(NUM_FEATURES, width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, NUM_CLASSES),
        )
    if arch == "cnn":
        return CNN(width, dropout)
    if arch == "gru":
        return GRU(width, dropout)
    raise ValueError(f"unknown arch {arch!r}; use one of logreg, mlp, cnn, gru")


model = make_model(cfg["arch"], width, cfg["dropout"])
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
total_steps = epochs * math.ceil(num_train / cfg["batch_size"])
loss_fn = nn.CrossEntropyLoss()


PACE_STEPS = 10  # steps timed, after the first (which pays one-off set-up), to project the run's CPU time
budget_bound = False  # set once, after 1 + PACE_STEPS steps: the planned steps would not fit in CPU_BUDGET_S


def progress(step: int, cpu_s: float) -> float:
    """Fraction of training done, 0..1: by steps, or by CPU time when CPU_BUDGET_S runs out first.

    The slow corners of the search space (a wide GRU with small batches) would take minutes;
    they get a complete cosine schedule squeezed into the budget instead of a cut-off one.
    Only a configuration projected to overrun the budget looks at the clock: every other one
    follows its steps alone, so the same parameters and seed train the same model whatever
    the CPU's speed, warm or cold. Budget-bound ones depend only on how fast this CPU is, not
    on what else runs beside them.
    """
    frac = step / total_steps
    return max(frac, cpu_s / CPU_BUDGET_S) if budget_bound else frac


# ---------------------------------------------------------------------------- training

t0 = time.time()  # wall clock, for train_seconds
cpu0 = time.process_time()  # CPU clock of this process, for the budget
val_cpu = 0.0  # CPU time of the per-epoch validation passes: outside the training budget


def train_cpu() -> float:
    return time.process_time() - cpu0 - val_cpu


shuffle = torch.Generator().manual_seed(trial.seed())
train_loss = float("nan")
train_accuracy = 0.0
step, done, epoch = 0, 0.0, 0
for epoch in range(1, epochs + 1):
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for idx in torch.randperm(num_train, generator=shuffle).split(cfg["batch_size"]):
        done = progress(step, train_cpu())
        if done >= 1.0:
            break  # out of time: the schedule has already decayed to 0
        for group in optimizer.param_groups:  # cosine decay from lr to 0
            group["lr"] = cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * done))
        xb, yb = X_train[idx], y_train[idx]
        logits = model(xb)
        loss = loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step == 1:
            first_step_cpu = train_cpu()
        elif step == 1 + PACE_STEPS:
            pace = (train_cpu() - first_step_cpu) / PACE_STEPS
            budget_bound = first_step_cpu + pace * (total_steps - 1) > CPU_BUDGET_S
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(dim=1) == yb).sum())
        seen += len(idx)
    if seen == 0:  # the budget ran out exactly at an epoch boundary
        epoch -= 1
        break
    # Averages over the epoch, measured while the weights moved (and with dropout on).
    train_loss = loss_sum / seen
    train_accuracy = correct / seen
    # The validation curve (prepare.py holds the labels): what the pruner and the analysis read.
    val_start = time.process_time()
    model.eval()
    with torch.no_grad():
        val = score_val(model(X_val).numpy())
    val_cpu += time.process_time() - val_start
    print(f"epoch {epoch:3d}/{epochs} | train_loss {train_loss:.4f} | train_accuracy {train_accuracy:.4f} "
          f"| val_loss {val['val_loss']:.4f} | val_accuracy {val['val_accuracy']:.4f}")
    if trial.report(epoch, train_loss=train_loss, train_accuracy=train_accuracy, lr=optimizer.param_groups[0]["lr"], **val):
        print(f"stop requested by the loop after epoch {epoch}")
        break
    if progress(step, train_cpu()) >= 1.0 and step < total_steps:
        print(f"CPU budget of {CPU_BUDGET_S} s used up after epoch {epoch}")
        break

# ---------------------------------------------------------------------------- outputs

model.eval()
with torch.no_grad():
    val_scores = model(X_val).numpy()  # (1000, 10) logits, scored by `prepare.py evaluate`
ckpt = trial.checkpoint_dir()
np.save(ckpt / PREDICTIONS_FILE, val_scores)
torch.save(model.state_dict(), ckpt / "model.pt")
train_seconds = time.time() - t0
train_cpu_seconds = train_cpu()
trial.log_metrics(train_loss=train_loss, train_accuracy=train_accuracy, train_seconds=train_seconds,
                  train_cpu_seconds=train_cpu_seconds, epochs_run=epoch)

# Grep-able summary: `name: value` lines (the loop's fallback metrics pattern reads them).
print("---")
print(f"train_loss: {train_loss:.6f}")
print(f"train_accuracy: {train_accuracy:.6f}")
print(f"train_seconds: {train_seconds:.1f}")
print(f"train_cpu_seconds: {train_cpu_seconds:.1f}")
print(f"epochs_run: {epoch}")
print(f"num_params: {sum(p.numel() for p in model.parameters())}")
