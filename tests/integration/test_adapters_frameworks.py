"""The adapters, each driving a tiny real model in a trial: Lightning, Keras, Hugging Face
Trainer, and plain PyTorch and JAX loops with ralph_ml.adapters.loops.

Every trial runs as a real subprocess with the RALPH_* environment the loop sets. The
loop's stop request is written into the control file by the trial itself at a chosen
point (a batch, an epoch end, a log call), which is what the loop's writer does from
outside, but at a reproducible moment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import make_experiment, ralph, recorded

pytestmark = pytest.mark.slow


@dataclass
class Trial:
    out: dict[str, Any]  # what the script printed as JSON on its last line
    progress: list[dict[str, Any]]  # progress.jsonl rows
    result: dict[str, Any] | None  # metrics.json "result", None when not written


def cycle_env(tmp_path: Path, cycle: Path, **extra: str) -> dict[str, str]:
    """This environment without its RALPH_* variables, plus what the loop gives a trial of cycle 1
    whose folder is ``cycle``, one thread, nothing downloaded, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
    env.update(
        RALPH_RUN_ID="test",
        RALPH_CYCLE="1",
        RALPH_SEED="0",
        RALPH_RUN_DIR=str(cycle),
        RALPH_METRICS_PATH=str(cycle / "metrics.json"),
        RALPH_PROGRESS_PATH=str(cycle / "progress.jsonl"),
        RALPH_CONTROL_PATH=str(cycle / "control.json"),
        RALPH_CHECKPOINT_DIR=str(cycle / "checkpoints"),
        RALPH_DATA_DIR=str(tmp_path / "data"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",  # nothing may be downloaded
        **extra,
    )
    return env


def run_trial(tmp_path: Path, script: str, **env: str) -> Trial:
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    (tmp_path / "train.py").write_text(textwrap.dedent(script))
    full = cycle_env(tmp_path, cycle, KERAS_BACKEND="torch", JAX_PLATFORMS="cpu", **env)
    proc = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress_path = cycle / "progress.jsonl"
    progress = [json.loads(line) for line in progress_path.read_text().splitlines()] if progress_path.exists() else []
    metrics_path = cycle / "metrics.json"
    result = json.loads(metrics_path.read_text())["result"] if metrics_path.exists() else None
    return Trial(json.loads(proc.stdout.strip().splitlines()[-1]), progress, result)


Trials = dict[str, "Future[Trial]"]


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trials]:
    """Every trial of TRIALS (end of file), run two at a time from the first test on.

    Each trial is a fresh Python process that spends most of its few seconds importing its
    framework; running two at once on the 2 cores halves the module's wall time.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_trial, tmp_path_factory.mktemp(name), script, **env)
            for name, (script, env) in TRIALS.items()
        }
        yield futures
        for future in futures.values():
            future.cancel()


# Two Gaussian blobs in 8-D: learnable to ~100% in a couple of epochs, so metrics move.
DATA = """
import numpy as np
rng = np.random.default_rng(0)
def blobs(n):
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 8)).astype("float32") + (2 * y[:, None] - 1).astype("float32")
    return x, y.astype("int64")
x_train, y_train = blobs(256)
x_val, y_val = blobs(64)

def ask_loop_to_stop():
    # What the loop does to stop a trial: write {"action": "stop"} to the control file.
    with open(os.environ["RALPH_CONTROL_PATH"], "w") as fh:
        json.dump({"action": "stop"}, fh)
"""

# --------------------------------------------------------------------------- Lightning

LIGHTNING = """
import json, os
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
if os.environ.get("TEST_LEGACY"):  # the older package only: the adapter must fall back to it
    import sys
    sys.modules["lightning"] = None
    import pytorch_lightning as pl
else:
    import lightning.pytorch as pl
from ralph_ml.adapters import lightning as adapter
from ralph_ml.adapters.lightning import RalphCallback
""" + DATA + """
STOP = os.environ.get("TEST_STOP", "")  # "batch:N": after the Nth batch; "val:E": at the end of epoch E's validation
STEP = os.environ.get("TEST_STEP", "epoch")  # "global_step": also validate (and report) every 4 batches
torch.manual_seed(0)

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.batches = 0

    def training_step(self, batch, idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.batches += 1
        if STOP == f"batch:{self.batches}":
            ask_loop_to_stop()
        return loss

    def validation_step(self, batch, idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking and STOP == f"val:{self.current_epoch + 1}":
            ask_loop_to_stop()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

def loader(x, y, shuffle):
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32, shuffle=shuffle)

net = Net()
trainer = pl.Trainer(max_epochs=4, callbacks=[RalphCallback(step=STEP)], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     val_check_interval=4 if STEP == "global_step" else 1.0)
trainer.fit(net, loader(x_train, y_train, True), loader(x_val, y_val, False))
print(json.dumps({"batches": net.batches, "all": adapter.__all__, "base": issubclass(RalphCallback, pl.Callback)}))
"""


def test_lightning_reports_each_epoch_and_writes_final_metrics(trials: Trials) -> None:
    t = trials["lightning"].result()
    assert t.out["all"] == ["RalphCallback"] and t.out["base"]
    assert t.out["batches"] == 4 * 8  # 4 epochs of 256/32 batches: nothing stopped it
    assert [row["step"] for row in t.progress] == [1, 2, 3, 4]  # epochs completed
    for row in t.progress:  # the epoch's train metric and its validation, in one row
        assert {"train_loss", "val_loss", "val_acc"} <= row.keys()
    assert t.progress[-1]["train_loss"] < t.progress[0]["train_loss"]  # it really trained
    assert t.result is not None and t.result["val_acc"] >= 0.9
    assert t.result["val_loss"] == pytest.approx(t.progress[-1]["val_loss"])


def test_lightning_stops_within_a_batch_of_the_request_and_reports_mid_epoch_validations(trials: Trials) -> None:
    # step="global_step", validation every 4 batches (8 per epoch); asked after batch 10.
    t = trials["lightning_stop_batch"].result()
    assert t.out["batches"] == 10
    # 4: a mid-epoch validation; 8: the end of epoch 1, its validation in the same row; 10: the
    # validation Lightning runs when a fit stops mid-epoch, then the end of the cut epoch 2.
    assert [row["step"] for row in t.progress] == [4, 8, 10, 10]
    assert all("val_acc" in row for row in t.progress)
    assert "train_loss" not in t.progress[0] and "train_loss" in t.progress[1]  # no epoch finished by batch 4
    assert t.result is not None and "val_acc" in t.result  # a stopped fit still ends normally


def test_lightning_stops_when_the_epoch_report_says_so_also_with_pytorch_lightning(trials: Trials) -> None:
    # Requested after epoch 2's last batch: only the report at the epoch's end can see it.
    # This trial imports only the older `pytorch_lightning` package.
    t = trials["pytorch_lightning_stop_report"].result()
    assert t.out["base"]  # the adapter fell back to pytorch_lightning.Callback
    assert t.out["batches"] == 2 * 8
    assert [row["step"] for row in t.progress] == [1, 2]


# --------------------------------------------------------------------------- Keras (torch backend)

KERAS = """
import json, os
import keras
from ralph_ml.adapters import keras as adapter
from ralph_ml.adapters.keras import RalphCallback
""" + DATA + """
STOP = os.environ.get("TEST_STOP", "")  # "batch:N" (Nth batch overall) or "epoch:E" (end of epoch E, before the report)
keras.utils.set_random_seed(0)

class LoopWriter(keras.callbacks.Callback):
    # Runs before RalphCallback in the list: writes the stop request at the chosen moment.
    def __init__(self):
        super().__init__()
        self.batches = 0
    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if STOP == f"batch:{self.batches}":
            ask_loop_to_stop()
    def on_epoch_end(self, epoch, logs=None):
        if STOP == f"epoch:{epoch + 1}":
            ask_loop_to_stop()

model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
writer = LoopWriter()
history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=4, batch_size=32, verbose=0,
                    callbacks=[writer, RalphCallback()])
print(json.dumps({"batches": writer.batches, "epochs": len(history.history["loss"]), "all": adapter.__all__,
                  "base": issubclass(RalphCallback, keras.callbacks.Callback)}))
"""


def test_keras_reports_each_epoch_and_writes_final_metrics(trials: Trials) -> None:
    t = trials["keras"].result()
    assert t.out == {"batches": 4 * 8, "epochs": 4, "all": ["RalphCallback"], "base": True}
    assert [row["step"] for row in t.progress] == [1, 2, 3, 4]
    for row in t.progress:
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= row.keys()
    assert t.progress[-1]["loss"] < t.progress[0]["loss"]
    assert t.result is not None and t.result["val_accuracy"] >= 0.9
    assert t.result["val_loss"] == pytest.approx(t.progress[-1]["val_loss"])


def test_keras_stops_within_a_batch_of_the_request(trials: Trials) -> None:
    t = trials["keras_stop_batch"].result()  # asked after the 10th batch: epoch 2's second
    assert (t.out["batches"], t.out["epochs"]) == (10, 2)
    assert [row["step"] for row in t.progress] == [1, 2]  # the cut-short epoch is still reported
    assert t.result is not None and "val_accuracy" in t.result


def test_keras_stops_when_the_epoch_report_says_so(trials: Trials) -> None:
    t = trials["keras_stop_report"].result()  # asked at the end of epoch 2, before the report
    assert (t.out["batches"], t.out["epochs"]) == (2 * 8, 2)
    assert [row["step"] for row in t.progress] == [1, 2]


# --------------------------------------------------------------------------- Hugging Face Trainer

HF = """
import json, os
import torch
from transformers import (BertConfig, BertForSequenceClassification, Trainer, TrainerCallback,
                          TrainingArguments)
from ralph_ml.adapters import hf as adapter
from ralph_ml.adapters.hf import RalphCallback
""" + DATA + """
STOP = os.environ.get("TEST_STOP", "")  # "step:N" (after optimizer step N) or "log:N" (in the log call at step N)
torch.manual_seed(0)

# A tiny BERT built from a config (no download) reads 8 tokens: the signs of the 8 features.
def tokens(x):
    return torch.from_numpy((x > 0).astype("int64"))

class Data(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.ids, self.y = tokens(x), torch.from_numpy(y)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.y[i]}

class LoopWriter(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if STOP == f"step:{state.global_step}":
            ask_loop_to_stop()
    def on_log(self, args, state, control, logs=None, **kw):
        if STOP == f"log:{state.global_step}":
            ask_loop_to_stop()

config = BertConfig(vocab_size=2, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)

def accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

args = TrainingArguments(output_dir=os.environ["RALPH_CHECKPOINT_DIR"], num_train_epochs=3,
                         per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-3,
                         logging_steps=4, eval_strategy="epoch", save_strategy="no", report_to=[],
                         use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
trainer = Trainer(model=model, args=args, train_dataset=Data(x_train, y_train), eval_dataset=Data(x_val, y_val),
                  compute_metrics=accuracy, callbacks=[LoopWriter(), RalphCallback()])
trainer.train()
print(json.dumps({"global_step": trainer.state.global_step, "all": adapter.__all__,
                  "base": issubclass(RalphCallback, TrainerCallback)}))
"""


def test_hf_reports_every_log_and_writes_final_metrics(trials: Trials) -> None:
    t = trials["hf"].result()
    assert t.out["all"] == ["RalphCallback"] and t.out["base"]
    assert t.out["global_step"] == 3 * 8  # 3 epochs of 8 steps
    train_rows = [row for row in t.progress if "loss" in row]
    eval_rows = [row for row in t.progress if "eval_loss" in row]
    assert [row["step"] for row in train_rows] == list(range(4, 25, 4))  # every logging_steps = 4
    assert [row["step"] for row in eval_rows] == [8, 16, 24]  # once an epoch
    assert all("eval_accuracy" in row for row in eval_rows)
    assert t.result is not None
    assert t.result["eval_accuracy"] == pytest.approx(eval_rows[-1]["eval_accuracy"])
    assert {"loss", "eval_loss", "train_runtime"} <= t.result.keys()


def test_hf_stops_within_a_step_of_the_request(trials: Trials) -> None:
    t = trials["hf_stop_step"].result()  # asked after optimizer step 10
    assert t.out["global_step"] == 10
    assert t.result is not None and "train_runtime" in t.result


def test_hf_stops_when_a_logged_report_says_so(trials: Trials) -> None:
    # Requested inside the log call at step 4: only RalphCallback.on_log's report sees it in time.
    t = trials["hf_stop_report"].result()
    assert t.out["global_step"] == 4
    assert max(row["step"] for row in t.progress) == 4


def test_hf_with_two_processes_stops_them_together_when_only_the_main_one_sees_the_target(tmp_path: Path) -> None:
    # Two DDP processes on the CPU (gloo). Only process 0 reports, so only it sees the target met
    # at its first log (step 4); stopping alone, it would leave process 1 waiting at the next
    # gradient sync. The callback combines the decision: both stop at the next step end.
    script = HF.replace("use_cpu=True,", "use_cpu=True, ddp_backend=\"gloo\",").replace(
        "print(json.dumps(",
        "open(os.path.join(os.environ[\"RALPH_RUN_DIR\"], f\"out_{os.environ['RANK']}.json\"), \"w\").write(json.dumps(",
    ).replace('"base": issubclass(RalphCallback, TrainerCallback)}))', '"base": issubclass(RalphCallback, TrainerCallback)}))\n'
              "import torch.distributed\ntorch.distributed.destroy_process_group()\n" + _EXIT_NOW)
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    (tmp_path / "train.py").write_text(textwrap.dedent(script))
    proc = _torchrun_two(tmp_path, cycle, {"name": "loss", "value": 100.0, "direction": "minimize"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads((cycle / f"out_{rank}.json").read_text())["global_step"] for rank in (0, 1)]
    assert steps == [5, 5], steps  # asked in the log call at step 4, stopped together at the end of step 5
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 4 and (cycle / "stopped.json").exists()  # process 0's report met the target


def _torchrun_two(tmp_path: Path, cycle: Path, target: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """``tmp_path/train.py`` as two processes (torchrun, gloo on the CPU), as a cycle of the loop.

    Its output goes to files, as the executors give a trial logs/stdout.log and stderr.log, and
    the scripts end with ``_EXIT_NOW``: torch 2.13 sometimes aborts a process at interpreter
    exit, after it has run to its end, written its results and destroyed its process group
    ("terminate called without an active exception", no Python frame): about 1 run in 10 with
    pipes on a loaded machine; with files, none of 100 for the plain loop but 2 of 40 for the
    Trainer, its results written (what the tests assert on) before the abort."""
    env = cycle_env(tmp_path, cycle, RALPH_STOP_AT_TARGET=json.dumps(target))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("w") as fo, err.open("w") as fe:
        rc = subprocess.run(argv, cwd=tmp_path, env=env, stdout=fo, stderr=fe, timeout=240).returncode
    return subprocess.CompletedProcess(argv, rc, out.read_text(), err.read_text())


# The end of a two-process test script: its results are written, so skip the interpreter's
# teardown, where torch 2.13 sometimes aborts (see _torchrun_two).
_EXIT_NOW = "import sys\nsys.stdout.flush()\nsys.stderr.flush()\nos._exit(0)\n"

DDP_STEPS = """
import json, os
import torch, torch.distributed as dist
from ralph_ml.adapters.loops import trial_steps

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
done = []
with trial_steps(10) as steps:
    for step in steps:
        loss = model(torch.ones(4, 2)).pow(2).mean()
        opt.zero_grad()
        loss.backward()  # a gradient sync every step: a process that stopped alone would hang the other
        opt.step()
        steps.report(val_accuracy=0.99 if rank == 0 and step >= 2 else 0.5, loss=loss)  # its graph is let go
        done.append(step)
open(os.path.join(os.environ["RALPH_RUN_DIR"], f"out_{rank}.json"), "w").write(json.dumps(done))
dist.destroy_process_group()
""" + _EXIT_NOW


def test_a_plain_loop_on_two_processes_reports_once_and_stops_them_together(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    (tmp_path / "train.py").write_text(DDP_STEPS)
    proc = _torchrun_two(tmp_path, cycle, {"name": "val_accuracy", "value": 0.98, "direction": "maximize"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [json.loads((cycle / f"out_{rank}.json").read_text()) for rank in (0, 1)]
    assert done == [[1, 2], [1, 2]]  # process 0 met the target at step 2: both stopped there
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["val_accuracy"] == 0.99  # process 0's rows only
    assert isinstance(rows[0]["loss"], float)
    assert json.loads((cycle / "metrics.json").read_text())["result"]["val_accuracy"] == 0.99
    assert json.loads((cycle / "stopped.json").read_text())["step"] == 2


# --------------------------------------------------------------------------- plain loops (PyTorch, JAX)

COMMON = """
import json, os
import numpy as np
from ralph_ml.adapters.loops import trial_steps

STOP_AT = int(os.environ.get("TEST_STOP_AT", "0"))  # the loop asks to stop during this epoch (0: never)
rng = np.random.default_rng(0)
y = rng.integers(0, 2, 256)
x = (rng.normal(0, 1, (256, 8)) + (2 * y[:, None] - 1)).astype("float32")

def ask_loop_to_stop():
    with open(os.environ["RALPH_CONTROL_PATH"], "w") as fh:
        json.dump({"action": "stop"}, fh)
"""

TORCH = COMMON + """
import torch
torch.manual_seed(0)
model = torch.nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
X, Y = torch.from_numpy(x), torch.from_numpy(y)
ran, stop = [], None
with trial_steps(6) as steps:
    for epoch in steps:
        ran.append(epoch)
        loss = torch.nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad(); loss.backward(); opt.step()
        if epoch == STOP_AT:
            ask_loop_to_stop()
        accuracy = (model(X).argmax(1) == Y).float().mean()
        stop = steps.report(train_loss=loss.detach(), train_accuracy=accuracy)  # 0-d tensors are fine
print(json.dumps({"ran": ran, "stopped_early": steps.stopped_early, "last_report": stop}))
"""

JAX = COMMON + """
import jax, jax.numpy as jnp
w, b = jnp.zeros((8, 2)), jnp.zeros(2)

def loss_fn(params, x, y):
    logits = x @ params[0] + params[1]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y]), logits

@jax.jit
def update(params, x, y):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
    params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    return params, loss, jnp.mean(logits.argmax(1) == y)

params, X, Y = (w, b), jnp.asarray(x), jnp.asarray(y)
ran = []
with trial_steps(6) as steps:
    for epoch in steps:
        ran.append(epoch)
        params, loss, accuracy = update(params, X, Y)
        if epoch == STOP_AT:
            ask_loop_to_stop()
        steps.report(train_loss=loss, train_accuracy=accuracy)  # jax Arrays, converted with float()
print(json.dumps({"ran": ran, "stopped_early": steps.stopped_early, "jax": jax.__version__}))
"""


def test_torch_loop_reports_every_epoch_and_writes_final_metrics(trials: Trials) -> None:
    t = trials["torch_loop"].result()
    assert t.out == {"ran": [1, 2, 3, 4, 5, 6], "stopped_early": False, "last_report": False}
    assert [row["step"] for row in t.progress] == [1, 2, 3, 4, 5, 6]
    assert t.progress[-1]["train_loss"] < t.progress[0]["train_loss"]
    assert t.result == {"train_loss": t.progress[-1]["train_loss"], "train_accuracy": t.progress[-1]["train_accuracy"]}
    assert t.result["train_accuracy"] > 0.9


def test_torch_loop_ends_after_the_step_in_which_the_loop_asked(trials: Trials) -> None:
    t = trials["torch_loop_stop"].result()  # asked during epoch 3
    assert t.out == {"ran": [1, 2, 3], "stopped_early": True, "last_report": True}
    assert [row["step"] for row in t.progress] == [1, 2, 3]
    assert t.result is not None and t.result["train_loss"] == t.progress[-1]["train_loss"]  # still written


def test_jax_loop_reports_every_epoch_and_writes_final_metrics(trials: Trials) -> None:
    t = trials["jax_loop"].result()
    assert t.out["ran"] == [1, 2, 3, 4, 5, 6] and not t.out["stopped_early"]
    assert [row["step"] for row in t.progress] == [1, 2, 3, 4, 5, 6]
    assert isinstance(t.progress[0]["train_loss"], float)
    assert t.progress[-1]["train_loss"] < t.progress[0]["train_loss"]
    assert t.result is not None and t.result["train_accuracy"] > 0.9


def test_jax_loop_ends_after_the_step_in_which_the_loop_asked(trials: Trials) -> None:
    t = trials["jax_loop_stop"].result()  # asked during epoch 2
    assert t.out["ran"] == [1, 2] and t.out["stopped_early"]
    assert [row["step"] for row in t.progress] == [1, 2]


# --------------------------------------------------------------------------- two JAX processes

JAX_TWO = """
import json, os
import numpy as np
import jax
jax.distributed.initialize(coordinator_address=os.environ["TEST_COORDINATOR"], num_processes=2,
                           process_id=int(os.environ["TEST_PROCESS_ID"]))
from jax.experimental import multihost_utils
from ralph_ml import trial
from ralph_ml.adapters.loops import trial_steps

rank = trial.rank()  # no RANK variable here: only jax.process_index() can tell the processes apart
done = []
with trial_steps(10) as steps:
    for step in steps:
        # A cross-process exchange every step, as a gradient sync: a process that stopped alone would
        # leave the other waiting here.
        seen = float(np.asarray(multihost_utils.process_allgather(np.array([float(step)]))).sum())
        steps.report(val_accuracy=0.99 if rank == 0 and step >= 2 else 0.5, seen=seen)
        done.append(step)
open(os.path.join(os.environ["RALPH_RUN_DIR"], f"out_{rank}.json"), "w").write(json.dumps(done))
"""

KERAS_JAX_TWO = """
import json, os
import keras
keras.distribution.initialize(job_addresses=os.environ["TEST_COORDINATOR"], num_processes=2,
                              process_id=int(os.environ["TEST_PROCESS_ID"]))
from ralph_ml import trial
from ralph_ml.adapters.keras import RalphCallback
""" + DATA + """
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
STOP_AT = int(os.environ.get("TEST_STOP_BATCH", "0"))  # process 0 asks the loop to stop after this batch

class LoopWriter(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if trial.rank() == 0 and batch + 1 == STOP_AT:
            ask_loop_to_stop()

ralph = RalphCallback(sync_every=int(os.environ.get("TEST_SYNC_EVERY", "20")))
history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=6, batch_size=32, verbose=0,
                    callbacks=[LoopWriter(), ralph])
open(os.path.join(os.environ["RALPH_RUN_DIR"], f"out_{trial.rank()}.json"), "w").write(
    json.dumps({"epochs": len(history.history["loss"]), "backend": keras.backend.backend(),
                "batches": ralph.batches, "world": trial.world_size()}))
"""


def _jax_two(tmp_path: Path, cycle: Path, script: str, target: dict[str, object],
             **extra: str) -> list[subprocess.CompletedProcess[str]]:
    """``script`` as two processes of one ``jax.distributed`` job on the CPU, as a cycle of the loop."""
    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "train.py").write_text(script)
    env = cycle_env(tmp_path, cycle, JAX_PLATFORMS="cpu", KERAS_BACKEND="jax", TEST_COORDINATOR=f"127.0.0.1:{port}",
                    RALPH_STOP_AT_TARGET=json.dumps(target), **extra)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        env.pop(var, None)
    procs = [subprocess.Popen([sys.executable, "train.py"], cwd=tmp_path, env={**env, "TEST_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        outs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return [subprocess.CompletedProcess(proc.args, proc.returncode, out, err) for proc, (out, err) in zip(procs, outs)]


def test_a_plain_loop_on_two_jax_processes_reports_once_and_stops_them_together(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    procs = _jax_two(tmp_path, cycle, JAX_TWO, {"name": "val_accuracy", "value": 0.98, "direction": "maximize"})
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    done = [json.loads((cycle / f"out_{rank}.json").read_text()) for rank in (0, 1)]
    assert done == [[1, 2], [1, 2]]  # process 0 met the target at step 2: both stopped there
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["val_accuracy"] == 0.99  # process 0's rows only
    assert [r["seen"] for r in rows] == [2.0, 4.0]  # both processes took part in every exchange
    assert json.loads((cycle / "metrics.json").read_text())["result"]["val_accuracy"] == 0.99
    assert json.loads((cycle / "stopped.json").read_text())["step"] == 2


def test_keras_on_two_jax_processes_reports_once_and_stops_them_together(tmp_path: Path) -> None:
    pytest.importorskip("jax")  # keras: imported in the trial, with KERAS_BACKEND=jax (here it would pick TensorFlow)
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    # Any loss meets this target: process 0 sees it at its first epoch's report, process 1 never
    # checks (it does not report), so only the callback's combined decision stops it too.
    procs = _jax_two(tmp_path, cycle, KERAS_JAX_TWO, {"name": "loss", "value": 100.0, "direction": "minimize"})
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    outs = [json.loads((cycle / f"out_{rank}.json").read_text()) for rank in (0, 1)]
    assert outs == [{"epochs": 1, "backend": "jax", "batches": 8, "world": 2}] * 2, outs  # 256 signals / 32
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "val_accuracy" in rows[0]
    assert json.loads((cycle / "stopped.json").read_text())["step"] == 1


def test_keras_on_two_jax_processes_agrees_on_a_stop_request_every_sync_every_batches(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    cycle = tmp_path / "cycle"
    cycle.mkdir()
    # Process 0 writes the stop request after batch 3; the processes agree every 5 batches, so
    # both leave epoch 1 after batch 5 (each alone would have read the file at its own batch).
    procs = _jax_two(tmp_path, cycle, KERAS_JAX_TWO, {"name": "loss", "value": -1.0, "direction": "minimize"},
                     TEST_STOP_BATCH="3", TEST_SYNC_EVERY="5")
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    outs = [json.loads((cycle / f"out_{rank}.json").read_text()) for rank in (0, 1)]
    assert outs == [{"epochs": 1, "backend": "jax", "batches": 5, "world": 2}] * 2, outs
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # epoch 1 still ends (validation, report) before the stop


# --------------------------------------------------------------------------- two MPI processes

MPI_TWO = """
import json, os
from mpi4py import MPI
from ralph_ml import trial
from ralph_ml.adapters.loops import trial_steps

comm = MPI.COMM_WORLD
rank = trial.rank()
done = []
with trial_steps(10) as steps:
    for step in steps:
        # A cross-process exchange every step, as a gradient sync: a process that stopped alone
        # would leave the other waiting here until the cycle's time limit.
        seen = comm.allreduce(step)
        steps.report(val_accuracy=0.99 if rank == 0 and step >= 2 else 0.5, seen=seen)
        done.append(step)
out = {"done": done, "rank": rank, "world": trial.world_size(), "mpi_rank": comm.Get_rank()}
open(os.path.join(os.environ["RALPH_RUN_DIR"], f"out_{rank}.json"), "w").write(json.dumps(out))
"""


def test_a_plain_loop_on_two_mpi_processes_stops_them_together_as_a_loop_cycle(tmp_path: Path) -> None:
    """`train_cmd = "mpiexec -n 2 python train.py"` through the real loop: process 0 meets the
    target at step 2, and trial.any_process (MPI's allreduce) stops process 1 there too."""
    pytest.importorskip("mpi4py")  # the dev extra installs mpi4py and MPICH (PyPI wheels, mpiexec included)
    root = make_experiment(tmp_path / "exp", MPI_TWO, target=0.98, safeguards={"max_cycles": 2, "time_limit_per_cycle_minutes": 1},
                           execution={"train_cmd": "mpiexec -n 2 python train.py"})
    proc = ralph(root, "start", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [rec] = recorded(root)
    assert rec["result"]["status"] == "ok" and rec["metric"] == 0.99 and rec["result"]["stopped_at_step"] == 2
    cycle = root / "runs" / "cycle_0001"
    outs = [json.loads((cycle / f"out_{rank}.json").read_text()) for rank in (0, 1)]
    assert outs == [{"done": [1, 2], "rank": r, "world": 2, "mpi_rank": r} for r in (0, 1)], outs
    rows = [json.loads(line) for line in (cycle / "progress.jsonl").read_text().splitlines()]
    assert [(r["step"], r["seen"]) for r in rows] == [(1, 2), (2, 4)]  # process 0's rows; both took part in each exchange


# name -> (script, extra environment); in the order the tests above use them.
TRIALS: dict[str, tuple[str, dict[str, str]]] = {
    "lightning": (LIGHTNING, {}),
    "lightning_stop_batch": (LIGHTNING, {"TEST_STOP": "batch:10", "TEST_STEP": "global_step"}),
    "pytorch_lightning_stop_report": (LIGHTNING, {"TEST_STOP": "val:2", "TEST_LEGACY": "1"}),
    "keras": (KERAS, {}),
    "keras_stop_batch": (KERAS, {"TEST_STOP": "batch:10"}),
    "keras_stop_report": (KERAS, {"TEST_STOP": "epoch:2"}),
    "hf": (HF, {}),
    "hf_stop_step": (HF, {"TEST_STOP": "step:10"}),
    "hf_stop_report": (HF, {"TEST_STOP": "log:4"}),
    "torch_loop": (TORCH, {}),
    "torch_loop_stop": (TORCH, {"TEST_STOP_AT": "3"}),
    "jax_loop": (JAX, {}),
    "jax_loop_stop": (JAX, {"TEST_STOP_AT": "2"}),
}
