"""Thin adapters from training frameworks to the in-trial helper :mod:`ralph_ml.trial`.

Each adapter lives in its own module and imports its framework only when imported
itself, so ``import ralph_ml.adapters`` (and ``ralph_ml.trial``) stays free of torch,
Lightning, Keras, transformers and JAX:

=================================  ====================================  =======================
module                             what to use                           install
=================================  ====================================  =======================
``ralph_ml.adapters.lightning``    ``RalphCallback()`` in ``Trainer``    ``ralph-ml[lightning]``
``ralph_ml.adapters.keras``        ``RalphCallback()`` in ``model.fit``  ``ralph-ml[keras]``
``ralph_ml.adapters.hf``           ``RalphCallback()`` in HF ``Trainer`` ``ralph-ml[hf]``
``ralph_ml.adapters.loops``        ``for step in trial_steps(n)``        nothing (PyTorch, JAX,
                                                                         numpy loops alike)
=================================  ====================================  =======================

Every adapter does the same three things through :mod:`ralph_ml.trial`: it appends the
framework's logged scalar metrics to ``progress.jsonl`` (``trial.report``) once per epoch
or logging step, stops training soon after the loop writes ``{"action": "stop"}`` to
``$RALPH_CONTROL_PATH`` (checked after every batch: one ``os.stat``), and merges the
final metrics into ``metrics.json`` (``trial.log_metrics``) when training ends. Outside
the loop they do nothing but that last write to ``./metrics.json``.
"""

from __future__ import annotations

__all__: list[str] = []
