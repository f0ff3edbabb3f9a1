"""Train an MLP on the 8x8 digits. MUTABLE: agents improve this file.

Runs on CPU in a few seconds: `python train.py`, then `python prepare.py evaluate`.
Inside the loop, hyperparameters come from the cycle's params.json (ralph_ml.trial.params);
standalone, the DEFAULTS below (the baseline) are used.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from prepare import NUM_CLASSES, NUM_FEATURES, PREDICTIONS_FILE, load_train, load_val_inputs, score_val
from ralph_ml import trial

# ---------------------------------------------------------------------------- hyperparameters

DEFAULTS = {
    "lr": 1e-3,  # Adam(W) learning rate
    "width": 64,  # hidden units per layer
    "depth": 1,  # number of hidden layers
    "dropout": 0.0,  # dropout probability after each hidden activation
    "weight_decay": 1e-5,  # AdamW decoupled weight decay
    "epochs": 15,  # passes over the 1,437 training images
    "batch_size": 128,  # images per optimizer step
}
NUM_THREADS = 1  # torch CPU threads; a tiny MLP gains nothing from more and stays reproducible
MAX_EPOCHS = 60  # hard cap whatever params say (the search space's top): a cycle stays < 15 s

cfg = trial.params(DEFAULTS)
epochs = min(cfg["epochs"], MAX_EPOCHS)

torch.set_num_threads(NUM_THREADS)
torch.manual_seed(trial.seed())
np.random.seed(trial.seed())

# ---------------------------------------------------------------------------- data

X_train_np, y_train_np = load_train()  # (1437, 64) float32, (1437,) int64
X_train = torch.from_numpy(X_train_np)
y_train = torch.from_numpy(y_train_np)
X_val = torch.from_numpy(load_val_inputs())  # (360, 64); labels stay inside prepare.py
num_train = len(X_train)

# ---------------------------------------------------------------------------- model


def make_mlp(width: int, depth: int, dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    fan_in = NUM_FEATURES
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(dropout)]
        fan_in = width
    layers.append(nn.Linear(fan_in, NUM_CLASSES))  # logits
    return nn.Sequential(*layers)


model = make_mlp(cfg["width"], cfg["depth"], cfg["dropout"])
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
loss_fn = nn.CrossEntropyLoss()

# ---------------------------------------------------------------------------- training

t0 = time.time()
shuffle = torch.Generator().manual_seed(trial.seed())
train_loss = float("nan")
train_accuracy = 0.0
for epoch in range(1, epochs + 1):
    model.train()
    loss_sum, correct = 0.0, 0
    for idx in torch.randperm(num_train, generator=shuffle).split(cfg["batch_size"]):
        xb, yb = X_train[idx], y_train[idx]
        logits = model(xb)
        loss = loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(dim=1) == yb).sum())
    # Averages over the epoch, measured while the weights moved (and with dropout on).
    train_loss = loss_sum / num_train
    train_accuracy = correct / num_train
    # The validation curve (prepare.py holds the labels): what the pruner and the analysis read.
    model.eval()
    with torch.no_grad():
        val = score_val(model(X_val).numpy())
    print(f"epoch {epoch:3d}/{epochs} | train_loss {train_loss:.4f} | train_accuracy {train_accuracy:.4f} "
          f"| val_loss {val['val_loss']:.4f} | val_accuracy {val['val_accuracy']:.4f}")
    if trial.report(epoch, train_loss=train_loss, train_accuracy=train_accuracy, **val):
        print(f"stop requested by the loop after epoch {epoch}")
        break

# ---------------------------------------------------------------------------- outputs

model.eval()
with torch.no_grad():
    val_scores = model(X_val).numpy()  # (360, 10) logits, scored by `prepare.py evaluate`
ckpt = trial.checkpoint_dir()
np.save(ckpt / PREDICTIONS_FILE, val_scores)
torch.save(model.state_dict(), ckpt / "model.pt")
trial.log_metrics(train_loss=train_loss, train_accuracy=train_accuracy)

# Grep-able summary: `name: value` lines (the loop's fallback metrics pattern reads them).
print("---")
print(f"train_loss: {train_loss:.6f}")
print(f"train_accuracy: {train_accuracy:.6f}")
print(f"train_seconds: {time.time() - t0:.1f}")
print(f"num_params: {sum(p.numel() for p in model.parameters())}")
