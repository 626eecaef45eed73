"""An ipywidgets panel to retrain ANI models interactively (chapter 7).

Typical use in a notebook (the last line shows the panel; the others do what typing and
clicking in it would)::

    panel = TrainingPanel(train_set, val_set)
    panel.widths["H"].value = "64, 32"
    panel.train_button.click()
    panel.wait()
    panel.runs_frame()            # the table of this session's runs
    panel

The panel holds per-element hidden-layer widths (typed as ``160, 128, 96``, with buttons to
add or remove a layer), the activation, optimizer, schedule, learning rate, weight decay,
batch size, epochs and seed. *Train* reads them into an
:class:`~anibook_utils.models.ArchitectureSpec` and a
:class:`~anibook_utils.training.TrainConfig`; settings that cannot run are refused with a
message under the buttons (never a traceback), and nothing is changed or started.

A run calls :func:`~anibook_utils.training.train` in a background thread (``background=True``,
the default), so the kernel stays free and the display live: the engine's per-epoch
``callback`` moves a progress bar and redraws the learning curve, a matplotlib figure rendered
to PNG into an ``ipywidgets.Image`` (a thread can update a widget's value; it cannot safely
print into a cell). *Stop* sets the ``threading.Event`` the engine checks after every batch,
so training ends within a batch and the best model so far is kept. Every finished run is added
to :attr:`TrainingPanel.runs` and to the table under the curve, so the runs of a session can
be compared. ``background=False`` runs in the calling thread instead (tests, the static book).
"""

from __future__ import annotations

import html
import io
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ipywidgets as w

from .data import ANIData
from .models import ACTIVATIONS, ArchitectureError, ArchitectureSpec
from .history import History, plain_log_ticks
from .training import OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig, TrainResult, train

__all__ = [
    "DEFAULT_EPOCHS", "MAX_LAYERS", "MAX_WIDTH", "TARGET_KCAL", "PanelRun", "TrainingPanel",
    "default_config", "draw_learning_curves", "format_widths", "parse_widths",
]

TARGET_KCAL = 1.0
"""The validation RMSE (kcal/mol) whose first crossing each run reports."""

DEFAULT_EPOCHS = 30
"""Epochs of the panel's default run (the rest is :meth:`TrainConfig.fast`)."""

MAX_WIDTH = 2048
"""Widest hidden layer the panel accepts (wider ones would take minutes per epoch on a CPU)."""

MAX_LAYERS = 8
"""Most hidden layers per element the panel accepts."""

NEW_LAYER_WIDTH = 64
"""Width of a layer added to an element that has none yet."""


def default_config(**overrides: Any) -> TrainConfig:
    """The panel's default settings: :meth:`TrainConfig.fast` for :data:`DEFAULT_EPOCHS` epochs."""
    return TrainConfig.fast(**{"epochs": DEFAULT_EPOCHS, **overrides})


def parse_widths(text: str, element: str = "this element") -> tuple[int, ...]:
    """Hidden-layer widths typed as text (``"160, 128, 96"``; commas or spaces) as a tuple.

    Raises :class:`~anibook_utils.models.ArchitectureError` with a message that says what to
    type for an empty text, a non-integer, a width below 1 or above :data:`MAX_WIDTH`, or more
    than :data:`MAX_LAYERS` layers.
    """
    example = "e.g. 160, 128, 96"
    tokens = [t for t in re.split(r"[,;\s]+", str(text).strip()) if t]
    if not tokens:
        raise ArchitectureError(
            f"{element} has no hidden layers: type at least one width ({example}).")
    widths = []
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            raise ArchitectureError(
                f"{element}: {token!r} is not a whole number; type the layer widths as whole "
                f"numbers separated by commas ({example}).") from None
        if value < 1:
            raise ArchitectureError(
                f"{element}: a layer of width {value} is not possible; widths are whole numbers of "
                f"at least 1 ({example}).")
        if value > MAX_WIDTH:
            raise ArchitectureError(
                f"{element}: a layer of width {value} is wider than this panel allows ({MAX_WIDTH}); "
                "it would take minutes per epoch on a CPU.")
        widths.append(value)
    if len(widths) > MAX_LAYERS:
        raise ArchitectureError(
            f"{element} has {len(widths)} hidden layers; this panel allows at most {MAX_LAYERS}.")
    return tuple(widths)


def format_widths(widths: Sequence[int]) -> str:
    """The text form :func:`parse_widths` reads: ``"160, 128, 96"``."""
    return ", ".join(str(int(v)) for v in widths)


@dataclass
class PanelRun:
    """One run made from the panel: its settings, the engine's result and its timings.

    ``result.model`` holds the best weights (lowest validation RMSE), also for stopped runs.
    ``seconds_to_target`` is the wall time from pressing *Train* (self energies and AEVs
    included) to the end of the first epoch whose validation RMSE was at most
    :data:`TARGET_KCAL`; None if no epoch got there.
    """

    number: int
    spec: ArchitectureSpec
    config: TrainConfig
    result: TrainResult
    wall_time: float
    seconds_to_target: float | None = None
    target: float = TARGET_KCAL

    @property
    def stop_reason(self) -> str:
        return self.result.stop_reason

    @property
    def stopped(self) -> bool:
        """True when the run was ended by *Stop* (or Ctrl-C) before its last epoch."""
        return self.result.interrupted

    @property
    def best_val_rmse(self) -> float:
        return self.result.best_val_rmse

    @property
    def epochs_run(self) -> int:
        return len(self.result.history)

    @staticmethod
    def columns(target: float = TARGET_KCAL) -> tuple[str, ...]:
        """The columns of :meth:`row`, in order."""
        return ("run", "layers", "activation", "parameters", "optimizer", "schedule", "lr", "weight decay",
                "batch", "epochs", "best val RMSE (kcal/mol)", "best epoch", f"s to {target:g} kcal/mol",
                "wall time (s)", "status")

    def row(self) -> dict[str, Any]:
        """The run as one row of :meth:`TrainingPanel.runs_frame`."""
        c = self.config
        return {
            "run": self.number,
            "layers": self.spec.label(),
            "activation": self.spec.activation,
            "parameters": self.spec.num_parameters(),
            "optimizer": c.optimizer,
            "schedule": c.schedule,
            "lr": c.lr,
            "weight decay": c.weight_decay,
            "batch": c.batch_size,
            "epochs": f"{self.epochs_run}/{c.epochs}",
            "best val RMSE (kcal/mol)": self.best_val_rmse,
            "best epoch": self.result.best_epoch,
            f"s to {self.target:g} kcal/mol": self.seconds_to_target,
            "wall time (s)": self.wall_time,
            "status": self.stop_reason,
        }


def draw_learning_curves(ax, history: History, previous: Sequence[PanelRun] = (),
                         target: float | None = TARGET_KCAL, title: str | None = None):
    """Draw ``history``'s training and validation RMSE on ``ax``, with the validation curves of
    ``previous`` runs (thin grey lines) and the ``target`` RMSE (dotted) for comparison."""
    for run in previous:
        ax.plot(run.result.history.column("epoch"), run.result.history.column("val_rmse"),
                color="grey", lw=0.8, alpha=0.6, label=f"run {run.number} (validation)")
    if target is not None:
        ax.axhline(target, color="black", ls=":", lw=0.8, label=f"{target:g} kcal/mol")
    if len(history):
        history.plot(ax=ax, title=title)
    else:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        ax.set_xlabel("epoch")
        ax.set_ylabel("energy RMSE (kcal/mol)")
        ax.text(0.5, 0.5, "waiting for the first epoch…", transform=ax.transAxes, ha="center",
                va="center", color="grey")
        if title:
            ax.set_title(title)
    return ax.figure


def _png(history: History | None, previous: Sequence[PanelRun], title: str, target: float) -> bytes:
    """A learning-curve figure as PNG bytes, drawn without pyplot (safe in a background thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if history is None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No run yet: choose the settings and press Train.", ha="center",
                va="center", color="grey", transform=ax.transAxes)
    else:
        draw_learning_curves(ax, history, previous, target=target, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _table_html(frame) -> str:
    """The runs table as HTML, numbers rounded for reading and missing values shown as "–"."""
    if frame.empty:
        return "<p><i>No runs yet in this session.</i></p>"
    formats = {"lr": "{:g}", "weight decay": "{:g}", "parameters": "{:,}", "best epoch": "{:.0f}",
               "best val RMSE (kcal/mol)": "{:.3f}", "wall time (s)": "{:.1f}"}
    shown = frame.astype(object)
    for name in shown.columns:
        spec = formats.get(name, "{:.1f}" if name.startswith("s to ") else "{}")
        shown[name] = ["–" if _missing(v) else spec.format(v) for v in frame[name].tolist()]
    html = shown.to_html(index=False, border=0, classes="anibook-runs")
    # Inline padding: the classic Notebook (ipywidgets 7, Colab's) gives an HTML widget's table none,
    # so headers and numbers would run together.
    return html.replace("<th>", f'<th style="{_CELL_STYLE}">').replace("<td>", f'<td style="{_CELL_STYLE}">')


_CELL_STYLE = "padding: 2px 10px; text-align: right; white-space: nowrap"


class TrainingPanel:
    """Retrain an ANI model from ipywidgets: settings, Train/Stop, live curve, runs table.

    Args:
        train_data, val_data: the training and validation sets.
        spec: the architecture the panel starts from and *Course architecture* restores
            (default :meth:`ArchitectureSpec.course`).
        config: the training settings the panel starts from and *Default settings* restores
            (default :func:`default_config`); fields the panel does not show (schedule
            details, standardisation, ...) are taken from it for every run.
        background: run :func:`train` in a background thread (True) or in the calling thread.
        redraw_interval: least seconds between redraws of the live curve (it is always
            redrawn at the end of a run).
        num_threads: CPU threads for training (None: torch's setting).
        target: the validation RMSE (kcal/mol) whose first crossing each run reports.

    The widgets are attributes (``widths[element]``, ``activation``, ``optimizer``,
    ``schedule``, ``lr``, ``weight_decay``, ``batch_size``, ``epochs``, ``seed``,
    ``train_button``, ``stop_button``, ``progress``, ``message``, ``curve``, ``table``), so
    code and tests can drive the panel as a reader would. :meth:`wait` blocks until the run
    in progress ends.
    """

    def __init__(self, train_data: ANIData, val_data: ANIData, spec: ArchitectureSpec | None = None,
                 config: TrainConfig | None = None, *, background: bool = True,
                 redraw_interval: float = 1.0, num_threads: int | None = None,
                 target: float = TARGET_KCAL) -> None:
        for label, data in (("train_data", train_data), ("val_data", val_data)):
            if not isinstance(data, ANIData):
                raise TypeError(f"TrainingPanel needs {label} as an ANIData (from load_dataset and "
                                f"split_dataset), got {type(data).__name__}.")
        self.train_data, self.val_data = train_data, val_data
        self.default_spec = spec if spec is not None else ArchitectureSpec.course()
        base = config if config is not None else default_config()
        self.default_config = base if num_threads is None else base.replace(num_threads=num_threads)
        self.background = background
        self.redraw_interval = redraw_interval
        self.target = target
        self.runs: list[PanelRun] = []
        self.last_error: Exception | None = None
        self._message_text = ""
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._busy = False
        self._build_widgets()
        self.reset_architecture()
        self.reset_settings()
        self.curve.value = _png(None, [], "", self.target)
        self._update_table()

    # ------------------------------------------------------------------ widgets

    def _build_widgets(self) -> None:
        def field() -> dict[str, Any]:  # a labelled input of the panel's width
            return {"style": {"description_width": "9em"}, "layout": w.Layout(width="22em")}

        self.widths: dict[str, w.Text] = {}
        self.add_layer_buttons: dict[str, w.Button] = {}
        self.remove_layer_buttons: dict[str, w.Button] = {}
        rows = []
        for element in self.default_spec.elements:
            box = w.Text(description=f"{element} layers", placeholder="e.g. 160, 128, 96", **field())
            add = w.Button(description="+ layer", tooltip=f"add a hidden layer to {element}",
                           layout=w.Layout(width="6em"))
            remove = w.Button(description="− layer", tooltip=f"remove the last hidden layer of {element}",
                              layout=w.Layout(width="6em"))
            add.on_click(lambda _, e=element: self.add_layer(e))
            remove.on_click(lambda _, e=element: self.remove_layer(e))
            box.observe(self._on_architecture_change, names="value")
            self.widths[element], self.add_layer_buttons[element] = box, add
            self.remove_layer_buttons[element] = remove
            rows.append(w.HBox([box, add, remove]))
        self.activation = w.Dropdown(options=ACTIVATIONS, description="activation", **field())
        self.activation.observe(self._on_architecture_change, names="value")
        self.architecture_info = w.HTML()
        self.reset_architecture_button = w.Button(description="Course architecture", layout=w.Layout(width="12em"),
                                                  tooltip="the course's widths (ANI-1x) and CELU")
        self.reset_architecture_button.on_click(lambda _: self.reset_architecture())

        self.optimizer = w.Dropdown(options=OPTIMIZERS, description="optimizer", **field())
        self.schedule = w.Dropdown(options=SCHEDULES, description="lr schedule", **field())
        self.lr = w.FloatText(description="learning rate", step=1e-4, **field())
        self.weight_decay = w.FloatText(description="weight decay", step=1e-5, **field())
        self.batch_size = w.IntText(description="batch size", **field())
        self.epochs = w.IntText(description="epochs", **field())
        self.seed = w.IntText(description="seed", **field())
        self.reset_settings_button = w.Button(description="Default settings", layout=w.Layout(width="12em"),
                                              tooltip="the book's fast recipe (TrainConfig.fast)")
        self.reset_settings_button.on_click(lambda _: self.reset_settings())

        self.train_button = w.Button(description="Train", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    tooltip="stop after the current batch and keep the best model so far")
        self.train_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="epochs", layout=w.Layout(width="22em"))
        self.status = w.HTML()
        self.message = w.HTML()
        self.curve = w.Image(format="png", layout=w.Layout(width="576px"))
        self.table = w.HTML()

        heading = lambda s: w.HTML(f"<b>{s}</b>")  # noqa: E731
        architecture = w.VBox([heading("Architecture (hidden-layer widths per element)"), *rows,
                               self.activation, self.architecture_info, self.reset_architecture_button])
        settings = w.VBox([heading("Training"), self.optimizer, self.schedule, self.lr, self.weight_decay,
                           self.batch_size, self.epochs, self.seed, self.reset_settings_button])
        controls = w.HBox([self.train_button, self.stop_button, self.progress, self.status])
        self.widget = w.VBox([
            w.HBox([architecture, settings], layout=w.Layout(grid_gap="2em")),
            controls, self.message, self.curve, heading("Runs in this session"), self.table,
        ])

    def _ipython_display_(self) -> None:
        """Ending a cell with ``panel`` shows it; IPython calls this on ipywidgets 7 and 8 alike
        (ipywidgets 7 widgets have no ``_repr_mimebundle_``, ipywidgets 8 ones no ``_ipython_display_``)."""
        self.display()

    def display(self) -> None:
        """Show the panel (same as ending a cell with ``panel``)."""
        from IPython.display import display

        display(self.widget)

    def _say(self, text: str, kind: str = "info") -> None:
        color = {"error": "#b00020", "warning": "#8a6d00", "info": "#1b5e20"}[kind]
        self._message_text = text
        self.message.value = f'<span style="color:{color}">{html.escape(text)}</span>' if text else ""

    @property
    def message_text(self) -> str:
        """The text of the message under the buttons ("" when none)."""
        return self._message_text

    # ------------------------------------------------------------------ reading the settings

    def read_spec(self) -> ArchitectureSpec:
        """The architecture the widgets describe (raises ArchitectureError if they cannot)."""
        hidden = {e: parse_widths(box.value, e) for e, box in self.widths.items()}
        return ArchitectureSpec(hidden, activation=self.activation.value,
                                celu_alpha=self.default_spec.celu_alpha)

    def read_config(self) -> TrainConfig:
        """The training settings the widgets describe (raises ConfigError if they cannot run)."""
        values = {"optimizer": self.optimizer.value, "schedule": self.schedule.value,
                  "lr": float(self.lr.value), "weight_decay": float(self.weight_decay.value),
                  "batch_size": int(self.batch_size.value), "epochs": int(self.epochs.value),
                  "seed": int(self.seed.value)}
        if not math.isfinite(values["weight_decay"]):
            raise ConfigError(f"weight_decay must be a finite number, got {values['weight_decay']}.")
        return self.default_config.replace(**values)

    def _on_architecture_change(self, _change=None) -> None:
        try:
            spec = self.read_spec()
        except ArchitectureError as exc:
            self.architecture_info.value = f'<span style="color:#b00020">{html.escape(str(exc))}</span>'
        else:
            self.architecture_info.value = f"{spec.num_parameters():,} trainable parameters"

    # ------------------------------------------------------------------ editing

    def add_layer(self, element: str) -> None:
        """Append a layer to ``element``'s network (as wide as its last one)."""
        box = self.widths[element]
        try:
            widths = parse_widths(box.value, element) if box.value.strip() else ()
        except ArchitectureError as exc:
            self._say(f"Cannot add a layer: {exc}", "error")
            return
        if len(widths) >= MAX_LAYERS:
            self._say(f"{element} already has {MAX_LAYERS} layers, the most this panel allows.", "error")
            return
        box.value = format_widths((*widths, widths[-1] if widths else NEW_LAYER_WIDTH))
        self._say("")

    def remove_layer(self, element: str) -> None:
        """Remove the last layer of ``element``'s network (one layer always stays)."""
        box = self.widths[element]
        try:
            widths = parse_widths(box.value, element)
        except ArchitectureError as exc:
            self._say(f"Cannot remove a layer: {exc}", "error")
            return
        if len(widths) == 1:
            self._say(f"{element} keeps at least one hidden layer.", "error")
            return
        box.value = format_widths(widths[:-1])
        self._say("")

    def reset_architecture(self) -> None:
        """Put back the starting architecture (the course's, unless another was given)."""
        for element, box in self.widths.items():
            box.value = format_widths(self.default_spec.hidden[element])
        self.activation.value = self.default_spec.activation
        self._on_architecture_change()

    def reset_settings(self) -> None:
        """Put back the starting training settings (:func:`default_config` unless others were given)."""
        c = self.default_config
        self.optimizer.value, self.schedule.value = c.optimizer, c.schedule
        self.lr.value, self.weight_decay.value = c.lr, c.weight_decay
        self.batch_size.value, self.epochs.value, self.seed.value = c.batch_size, c.epochs, c.seed

    def restore(self, number: int) -> None:
        """Put the settings of run ``number`` back into the widgets."""
        run = next((r for r in self.runs if r.number == number), None)
        if run is None:
            raise ValueError(f"No run {number}: this session has runs {[r.number for r in self.runs]}.")
        for element, box in self.widths.items():
            box.value = format_widths(run.spec.hidden.get(element, self.default_spec.hidden[element]))
        self.activation.value = run.spec.activation
        c = run.config
        self.optimizer.value, self.schedule.value = c.optimizer, c.schedule
        self.lr.value, self.weight_decay.value = c.lr, c.weight_decay
        self.batch_size.value, self.epochs.value, self.seed.value = c.batch_size, c.epochs, c.seed

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._busy

    def start(self) -> bool:
        """What *Train* does: read the settings, refuse them with a message if they cannot run,
        else start a run (in the background unless ``background=False``). Returns True if started."""
        with self._lock:
            if self._busy:
                self._say("A run is in progress: press Stop (or wait for it) before starting another.",
                          "warning")
                return False
            try:
                spec, config = self.read_spec(), self.read_config()
            except (ArchitectureError, ConfigError, ValueError, TypeError, OverflowError) as exc:
                self.last_error = exc
                self._say(f"Not started: {exc}", "error")
                return False
            self._busy = True
        self.last_error = None
        self._stop_event = threading.Event()
        number = (self.runs[-1].number if self.runs else 0) + 1
        self._say("")
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.progress.max, self.progress.value, self.progress.bar_style = config.epochs, 0, ""
        self.status.value = f"run {number}: computing self energies and AEVs…"
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(number, spec, config, self._stop_event),
                                            name=f"anibook-training-{number}", daemon=True)
            self._thread.start()
        else:
            self._thread = None
            self._run(number, spec, config, self._stop_event)
        return True

    def stop(self) -> None:
        """What *Stop* does: end the run in progress after its current batch, keeping the best model."""
        if self._busy:
            self._stop_event.set()
            self.status.value = "stopping after this batch…"

    def wait(self, timeout: float | None = None) -> PanelRun | None:
        """Block until the run in progress ends (at most ``timeout`` seconds, else TimeoutError);
        return the latest run (None if there is none)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"The run is still going after {timeout} s: call stop() to end it.")
        return self.runs[-1] if self.runs else None

    def _run(self, number: int, spec: ArchitectureSpec, config: TrainConfig, stop_event: threading.Event) -> None:
        clicked = time.perf_counter()
        records: list[dict[str, Any]] = []
        reached: list[float] = []
        last_draw, draw_time = [-math.inf], [0.0]
        previous = self.runs[-4:]
        title = f"run {number}"

        def on_epoch(record: dict[str, Any]) -> None:
            records.append(record)
            now = time.perf_counter()
            if not reached and record["val_rmse"] <= self.target:
                reached.append(now - clicked)
            best = min(r["val_rmse"] for r in records)
            self.progress.value = record["epoch"]
            self.status.value = (f"run {number}: epoch {record['epoch']}/{config.epochs}, validation RMSE "
                                 f"{record['val_rmse']:.3f} kcal/mol (best {best:.3f}), {now - clicked:.0f} s")
            # Drawing takes ~0.1 s of the training thread: redraw at most every redraw_interval
            # seconds and never more often than 10x the last drawing time (<= ~10 % overhead).
            if now - last_draw[0] >= max(self.redraw_interval, 10 * draw_time[0]):
                self.curve.value = _png(History(records), previous, title, self.target)
                last_draw[0] = time.perf_counter()
                draw_time[0] = last_draw[0] - now

        try:
            result = train(spec, self.train_data, self.val_data, config, callback=on_epoch,
                           stop_event=stop_event, progress=False)
        except Exception as exc:  # shown in the panel: a background thread has no cell to raise into
            self.last_error = exc
            self._say(f"Run {number} failed: {exc}", "error")
            self.status.value = f"run {number} failed"
            self.progress.bar_style = "danger"
        else:
            run = PanelRun(number, spec, config, result, wall_time=time.perf_counter() - clicked,
                           seconds_to_target=reached[0] if reached else None, target=self.target)
            self.runs.append(run)
            self.curve.value = _png(result.history, previous, title, self.target)
            self.progress.bar_style = "warning" if run.stopped else "success"
            best = "no epoch finished" if result.best_epoch is None else (
                f"best validation RMSE {result.best_val_rmse:.3f} kcal/mol at epoch {result.best_epoch}")
            verb = "stopped" if run.stopped else "finished"
            self.status.value = f"run {number} {verb} ({result.stop_reason}): {best}, {run.wall_time:.1f} s"
            self._update_table()
        finally:
            self.train_button.disabled, self.stop_button.disabled = False, True
            self._busy = False

    # ------------------------------------------------------------------ results

    def runs_frame(self):
        """The runs of this session as a pandas DataFrame (one row per run)."""
        import pandas as pd

        columns = list(PanelRun.columns(self.target))
        return pd.DataFrame([run.row() for run in self.runs], columns=columns)

    def _update_table(self) -> None:
        self.table.value = _table_html(self.runs_frame())

    def __repr__(self) -> str:
        state = "running" if self._busy else "idle"
        return f"TrainingPanel({len(self.runs)} runs, {state})"
