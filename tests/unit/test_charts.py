"""The report's parameter chart, read back from the drawn matplotlib figure: plain-text log
ticks (no mathtext), one y range on every panel, value labels only where a row starts."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg

from ralph_ml.charts import Point, param_effects, param_effects_figure

PARAMS = {
    "lr": {"log": True, "choices": None},  # 1e-3 .. 2e-2: 1.3 decades, minor ticks kept
    "weight_decay": {"log": True, "choices": None},  # 1e-6 .. 1e-2: four decades, one tick per decade
    "dropout": {"log": False, "choices": None},
    "opt": {"log": False, "choices": ["sgd", "adam"]},
    "depth": {"log": False, "choices": None},  # one value throughout: no panel
}


def _points() -> list[Point]:
    rows = [
        (1, 1e-3, 1e-6, 0.0, "sgd", 0.91, "kept"),
        (2, 5e-3, 1e-4, 0.1, "adam", 0.95, "kept"),
        (3, 2e-2, 1e-2, 0.3, "adam", None, "failed"),
        (4, 3e-3, 3e-5, 0.2, "sgd", 0.93, "discarded"),
    ]
    return [Point(cycle=c, metric=m, category=cat,
                  params={"lr": lr, "weight_decay": wd, "dropout": do, "opt": opt, "depth": 2})
            for c, lr, wd, do, opt, m, cat in rows]


def _drawn():
    fig = param_effects_figure(_points(), PARAMS, name="val_accuracy", maximize=True, best_cycle=2)
    assert fig is not None
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig, [ax for ax in fig.axes if ax.get_visible()]


def test_one_panel_per_parameter_that_varied() -> None:
    _, axes = _drawn()
    assert [ax.get_xlabel() for ax in axes] == ["lr (log)", "weight_decay (log)", "dropout", "opt"]


def test_log_axes_are_labelled_in_plain_text() -> None:
    _, axes = _drawn()
    for ax in axes[:2]:
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()]
        assert labels, ax.get_xlabel()
        assert not any("$" in t for t in labels), labels  # mathtext costs more than the rest of the panel
    lr_labels = {t.get_text() for t in axes[0].get_xticklabels()}
    assert "1e−02" in lr_labels or "1e-02" in lr_labels, lr_labels
    assert len(axes[0].get_xticks(minor=True)) > 0  # 1.3 decades: the minor ticks help reading
    assert len(axes[1].get_xticks(minor=True)) == 0  # four decades: a tick per decade is enough


def test_panels_share_one_y_range_labelled_at_the_start_of_each_row() -> None:
    fig, axes = _drawn()
    assert len({ax.get_ylim() for ax in axes}) == 1
    assert len({tuple(ax.get_yticks()) for ax in axes}) == 1
    shown = [any(t.label1.get_visible() for t in ax.yaxis.get_major_ticks()) for ax in axes]
    assert shown == [True, False, False, True]  # three panels a row: lr and opt start the rows
    assert [ax.get_ylabel() for ax in axes] == ["val_accuracy", "", "", "val_accuracy"]
    # the failed cycle sits in the "no score" row, named at the start of both rows
    no_score = [t for ax in axes for t in ax.texts if t.get_text() == "no score"]
    assert len(no_score) == 2


def test_the_chart_is_a_png() -> None:
    png = param_effects(_points(), PARAMS, name="val_accuracy", maximize=True, best_cycle=2)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert param_effects(_points(), {"depth": PARAMS["depth"]}, name="val_accuracy", maximize=True) is None
