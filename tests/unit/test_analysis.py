from __future__ import annotations

from ralph_ml.analysis import analyze
from ralph_ml.config import Config
from ralph_ml.records import FailureClass, TrialResult, TrialStatus


def cfg(**extra_space: dict[str, object]) -> Config:
    return Config.model_validate({
        "project": {"target_metric": {"name": "val_accuracy", "value": 0.99}},
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "epochs": {"type": "int", "low": 1, "high": 50},
            **extra_space,
        },
    })


def test_overfitting_when_train_and_val_are_both_reported() -> None:
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.90, "train_accuracy": 1.0})
    a = analyze(r, 0.90, True, [], [], cfg())
    assert a.diagnosis == "overfitting"
    top = [x.action for x in a.recommendations if x.confidence == "high"]
    assert "increase:dropout" in top and "increase:weight_decay" in top


def test_diverged_on_nan() -> None:
    r = TrialResult(status=TrialStatus.FAILED, failure=FailureClass.NAN, metrics={"val_accuracy": float("nan")})
    a = analyze(r, None, False, [], [{"step": 1, "train_loss": "nan"}], cfg())
    assert a.diagnosis == "diverged" and a.recommendations[0].action == "decrease:lr"


def test_a_crash_of_a_code_change_calls_for_a_fix_and_a_crash_of_params_for_another_region() -> None:
    r = TrialResult(status=TrialStatus.FAILED, failure=FailureClass.CRASH, exit_code=1, message="exited with code 1")
    fix = analyze(r, None, False, [], [], cfg(), changed_code=True)
    assert fix.diagnosis == "failed" and fix.summary.startswith("The code change crashed (crash)")
    assert [(x.action, x.confidence) for x in fix.recommendations] == [("fix the code change", "high")]
    other = analyze(r, None, False, [], [], cfg())
    assert [x.action for x in other.recommendations] == ["explore another region of the search space"]


def test_underfitting_when_loss_still_falls_at_the_end() -> None:
    rows = [{"step": i, "train_loss": 2.0 / (i + 1)} for i in range(8)]
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.8, "train_accuracy": 0.8})
    a = analyze(r, 0.8, True, [], rows, cfg())
    assert "increase:epochs" in [x.action for x in a.recommendations if x.confidence == "high"]


def test_recommendations_only_name_params_in_the_space() -> None:
    c = Config.model_validate({"project": {"target_metric": {"name": "val_accuracy", "value": 0.99}}})
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.9, "train_accuracy": 1.0})
    a = analyze(r, 0.9, True, [], [], c)
    assert all(x.param is None for x in a.recommendations)


def test_no_underfitting_when_the_training_set_is_already_fit() -> None:
    rows = [{"step": i, "train_loss": 2.0 / (i + 1)} for i in range(8)]
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.98, "train_accuracy": 1.0})
    a = analyze(r, 0.98, True, [], rows, cfg())
    assert a.diagnosis != "underfitting"
    assert "increase:epochs" not in [x.action for x in a.recommendations]


def test_a_fit_training_set_short_of_the_target_calls_for_regularization_whatever_the_gap() -> None:
    # train 0.999 vs val 0.975: a gap under the 0.03 over-fitting threshold, but the training
    # set is fit, so only better generalization can reach 0.99.
    rows = [{"step": i, "train_loss": 0.5 / (i + 1)} for i in range(8)]
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.975, "train_accuracy": 0.999})
    a = analyze(r, 0.975, True, [], rows, cfg())
    assert a.diagnosis == "overfitting" and "the training set is fit" in a.summary
    top = [x.action for x in a.recommendations if x.confidence == "high"]
    assert "increase:dropout" in top and "increase:weight_decay" in top
    # the target met: nothing to close, no such advice
    met = analyze(TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.995, "train_accuracy": 0.999}),
                  0.995, True, [], rows, cfg())
    assert met.diagnosis != "overfitting"


def test_under_training_advice_raises_epochs_and_learning_rate_with_high_confidence() -> None:
    rows = [{"step": i, "train_loss": 2.0 / (i + 1)} for i in range(8)]
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.8, "train_accuracy": 0.82})
    top = [x.action for x in analyze(r, 0.8, True, [], rows, cfg()).recommendations if x.confidence == "high"]
    assert top[:2] == ["increase:epochs", "increase:lr"]


def test_a_fit_training_set_short_of_the_target_calls_for_a_wider_model_first() -> None:
    c = cfg(width={"type": "int", "low": 16, "high": 256, "log": True})
    rows = [{"step": i, "train_loss": 0.5 / (i + 1)} for i in range(8)]
    fit = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.975, "train_accuracy": 1.0})
    top = [x.action for x in analyze(fit, 0.975, True, [], rows, c).recommendations if x.confidence == "high"]
    assert top == ["increase:width", "increase:dropout", "increase:weight_decay"]
    # A gap without a fit training set (train 0.95, val 0.90) is over-fitting too, but a wider
    # model would fit it better still: regularize only.
    gap = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.90, "train_accuracy": 0.95})
    actions = [x.action for x in analyze(gap, 0.90, True, [], rows, c).recommendations]
    assert "increase:dropout" in actions and "increase:width" not in actions


def test_a_validation_curve_that_peaked_before_the_end_is_noted() -> None:
    curve = [0.90, 0.95, 0.975, 0.981, 0.978, 0.972, 0.968]
    rows = [{"step": i + 1, "train_loss": 1.0 / (i + 1), "val_accuracy": v} for i, v in enumerate(curve)]
    r = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.968})
    a = analyze(r, 0.968, True, [], rows, cfg())
    assert "val_accuracy peaked at 0.981 at step 4 and ended at 0.968 (step 7)" in a.summary
    rising = [{**row, "val_accuracy": 0.9 + 0.01 * i} for i, row in enumerate(rows)]  # best at the end: nothing to say
    assert "peaked" not in analyze(r, 0.96, True, [], rising, cfg()).summary
    flat = [{**row, "val_accuracy": 0.968 + (0.0005 if i == 3 else 0.0)} for i, row in enumerate(rows)]  # within delta
    assert "peaked" not in analyze(r, 0.968, True, [], flat, cfg()).summary


def test_keras_and_hugging_face_names_are_read_as_the_training_and_validation_metrics() -> None:
    # Keras reports the training set as `loss`/`accuracy` beside val_loss/val_accuracy.
    keras = TrialResult(status=TrialStatus.OK, metrics={"val_accuracy": 0.90, "accuracy": 1.0, "loss": 0.01, "val_loss": 0.4})
    a = analyze(keras, 0.90, True, [], [], cfg())
    assert a.diagnosis == "overfitting" and "train vs validation gap of 0.100 in accuracy" in a.summary
    # Hugging Face's Trainer logs `loss` (training) and eval_loss / eval_accuracy.
    hf_cfg = Config.model_validate({"project": {"target_metric": {"name": "eval_accuracy", "value": 0.99}},
                                    "search_space": {"num_train_epochs": {"type": "int", "low": 1, "high": 20}}})
    rows = [{"step": i, "loss": 2.0 / (i + 1), "eval_loss": 1.0 / (i + 1)} for i in range(8)]
    hf = TrialResult(status=TrialStatus.OK, metrics={"eval_accuracy": 0.8})
    b = analyze(hf, 0.8, True, [], rows, hf_cfg)
    assert "training loss was still falling at the last step" in b.summary
    assert ("increase:num_train_epochs", "high") in [(x.action, x.confidence) for x in b.recommendations]
