"""The retraining panel (chapter 7), driven as a reader would: type, click, wait, read the table."""

from __future__ import annotations

import ast
import json
import math
import queue
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
import pytest
import torch

from anibook_utils.data import split_dataset
from anibook_utils.models import COURSE_HIDDEN, ArchitectureError, ArchitectureSpec
from anibook_utils.widgets import (
    DEFAULT_EPOCHS,
    MAX_LAYERS,
    MAX_WIDTH,
    PanelRun,
    TrainingPanel,
    default_config,
    draw_learning_curves,
    format_widths,
    parse_widths,
)

pytestmark = pytest.mark.usefixtures("real_data")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sets(real_data):
    """A small mixed training set (900) and validation set (300) cut from the real data."""
    index = torch.randperm(len(real_data), generator=torch.Generator().manual_seed(0))[:1200]
    return split_dataset(real_data.subset(index), 0.75, seed=0)


def make_panel(sets, background=True, widths="16", epochs=2, **kwargs) -> TrainingPanel:
    """A panel with tiny networks and a tiny budget, as a test would set it up by typing."""
    panel = TrainingPanel(*sets, background=background, num_threads=1, **kwargs)
    for box in panel.widths.values():
        box.value = widths
    panel.epochs.value = epochs
    panel.batch_size.value = 64
    return panel


def displayed(obj) -> dict:
    """The mime bundle IPython shows for ``obj`` at the end of a cell (ipywidgets 7 and 8 alike)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    with capture_output() as captured:
        display(obj)
    assert len(captured.outputs) == 1, captured.outputs
    return captured.outputs[0].data


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --- reading widths ------------------------------------------------------------------------


@pytest.mark.parametrize("text, widths", [("160, 128, 96", (160, 128, 96)), ("64 32", (64, 32)),
                                          (" 8 ,", (8,)), ("1;2", (1, 2))])
def test_parse_widths_reads_commas_and_spaces(text, widths):
    assert parse_widths(text, "H") == widths
    assert parse_widths(format_widths(widths)) == widths


@pytest.mark.parametrize("text, expected", [
    ("0", "width 0 is not possible"),
    ("-5", "width -5 is not possible"),
    ("abc", "'abc' is not a whole number"),
    ("64, 1.5", "'1.5' is not a whole number"),
    ("", "no hidden layers"),
    ("   ", "no hidden layers"),
    (str(MAX_WIDTH + 1), "wider than this panel allows"),
    (", ".join(["8"] * (MAX_LAYERS + 1)), f"at most {MAX_LAYERS}"),
])
def test_parse_widths_refuses_with_a_message_that_says_what_to_type(text, expected):
    with pytest.raises(ArchitectureError, match=expected) as info:
        parse_widths(text, "C")
    assert str(info.value).startswith("C")


# --- the panel's starting state --------------------------------------------------------------


def test_panel_starts_from_the_course_architecture_and_the_fast_recipe(sets):
    panel = TrainingPanel(*sets)
    assert {e: parse_widths(b.value) for e, b in panel.widths.items()} == COURSE_HIDDEN
    assert panel.read_spec() == ArchitectureSpec.course()
    assert panel.read_config() == default_config()
    assert panel.epochs.value == DEFAULT_EPOCHS
    assert f"{ArchitectureSpec.course().num_parameters():,} trainable parameters" in panel.architecture_info.value
    assert panel.runs == [] and not panel.running and panel.wait() is None
    assert "No runs yet" in panel.table.value
    assert bytes(panel.curve.value).startswith(PNG_MAGIC)
    assert (panel.train_button.disabled, panel.stop_button.disabled) == (False, True)
    assert "application/vnd.jupyter.widget-view+json" in displayed(panel)
    assert list(panel.runs_frame().columns) == list(PanelRun.columns())


# --- training -------------------------------------------------------------------------------


def test_train_button_runs_in_the_background_and_adds_a_row(sets):
    panel = make_panel(sets, widths="32, 16")
    panel.widths["O"].value = "8"
    panel.train_button.click()
    assert panel.running, "Train must return while the run goes on in its thread"
    assert panel.train_button.disabled and not panel.stop_button.disabled
    run = panel.wait(120)
    assert not panel.running
    assert len(panel.runs) == 1 and run is panel.runs[0]
    assert run.number == 1 and run.stop_reason == "completed" and not run.stopped
    assert run.epochs_run == 2 and run.config.epochs == 2 and run.config.batch_size == 64
    assert run.spec.hidden == {"H": (32, 16), "C": (32, 16), "N": (32, 16), "O": (8,)}
    assert run.best_val_rmse == min(run.result.history.column("val_rmse"))
    assert (panel.progress.value, panel.progress.max, panel.progress.bar_style) == (2, 2, "success")
    assert (panel.train_button.disabled, panel.stop_button.disabled) == (False, True)
    assert bytes(panel.curve.value).startswith(PNG_MAGIC)
    assert "run 1 finished" in panel.status.value
    row = panel.runs_frame().iloc[0]
    assert row["run"] == 1 and row["epochs"] == "2/2" and row["status"] == "completed"
    assert row["layers"] == "H,C,N 32-16 · O 8"
    assert row["parameters"] == run.spec.num_parameters()
    assert row["best val RMSE (kcal/mol)"] == pytest.approx(run.best_val_rmse)
    assert "H,C,N 32-16 · O 8" in panel.table.value and "completed" in panel.table.value
    assert panel.message_text == ""


def test_synchronous_panel_returns_when_the_run_is_over(sets):
    panel = make_panel(sets, background=False)
    assert panel.start() is True
    assert not panel.running and len(panel.runs) == 1
    assert panel.wait(0) is panel.runs[0]
    assert panel.runs_frame()["epochs"].tolist() == ["2/2"]


def test_stop_keeps_the_best_model_and_marks_the_run_stopped(sets):
    panel = make_panel(sets, epochs=10_000)
    panel.train_button.click()
    wait_until(lambda: panel.progress.value >= 3)
    panel.train_button.click()  # a second Train while running is refused, the run goes on
    assert "in progress" in panel.message_text and panel.running
    panel.stop_button.click()
    run = panel.wait(60)
    assert len(panel.runs) == 1
    assert run.stop_reason == "stopped" and run.stopped
    assert 3 <= run.epochs_run < 10_000
    history = run.result.history
    assert run.best_val_rmse == min(history.column("val_rmse"))
    assert run.result.best_epoch == history.best()["epoch"]
    # the model handed back holds the best epoch's weights, not the interrupted epoch's
    assert run.result.evaluate(sets[1])["rmse"] == pytest.approx(run.best_val_rmse, rel=1e-5)
    assert "stopped" in panel.status.value and panel.progress.bar_style == "warning"
    assert panel.runs_frame()["status"].tolist() == ["stopped"]
    assert "stopped" in panel.table.value


@pytest.mark.parametrize("text, expected", [
    ("0", "width 0 is not possible"),
    ("abc", "'abc' is not a whole number"),
    ("", "no hidden layers"),
    ("-16", "width -16 is not possible"),
])
def test_invalid_widths_are_refused_and_nothing_is_lost(sets, text, expected):
    panel = make_panel(sets, background=False)
    panel.train_button.click()
    assert len(panel.runs) == 1
    first = panel.runs[0]
    panel.widths["N"].value = text
    assert expected in panel.architecture_info.value.replace("&#x27;", "'")  # said while typing
    panel.train_button.click()
    assert panel.message_text.startswith("Not started") and expected in panel.message_text
    assert "Traceback" not in panel.message.value
    assert isinstance(panel.last_error, ArchitectureError)
    assert not panel.running and panel.runs == [first]  # no run started, the earlier one kept
    assert panel.widths["N"].value == text  # what the reader typed stays, to be corrected
    assert panel.widths["H"].value == "16" and panel.epochs.value == 2
    assert "16" in panel.table.value
    panel.widths["N"].value = "16"
    panel.train_button.click()
    assert [r.number for r in panel.runs] == [1, 2] and panel.message_text == ""


@pytest.mark.parametrize("name, value, expected", [
    ("lr", -1e-3, "lr must be a positive number"),
    ("lr", 0.0, "lr must be a positive number"),
    ("epochs", 0, "epochs must be a positive integer"),
    ("batch_size", -8, "batch_size must be a positive integer"),
    ("weight_decay", -1.0, "weight_decay must be a number >= 0"),
])
def test_invalid_training_settings_are_refused(sets, name, value, expected):
    panel = make_panel(sets, background=False)
    getattr(panel, name).value = value
    panel.train_button.click()
    assert panel.message_text.startswith("Not started") and expected in panel.message_text
    assert panel.runs == [] and not panel.running
    assert getattr(panel, name).value == value


def test_a_failing_run_shows_a_message_and_frees_the_panel(sets, monkeypatch):
    import anibook_utils.widgets as widgets

    def diverging(*args, **kwargs):
        raise FloatingPointError("The validation error became nan at epoch 1: training diverged.")

    monkeypatch.setattr(widgets, "train", diverging)
    panel = make_panel(sets)
    panel.train_button.click()
    assert panel.wait(30) is None
    assert panel.runs == [] and not panel.running
    assert panel.message_text == "Run 1 failed: The validation error became nan at epoch 1: training diverged."
    assert isinstance(panel.last_error, FloatingPointError)
    assert (panel.train_button.disabled, panel.stop_button.disabled) == (False, True)
    assert panel.progress.bar_style == "danger"


def test_wait_times_out_while_a_run_goes_on(sets):
    panel = make_panel(sets, epochs=10_000)
    panel.train_button.click()
    with pytest.raises(TimeoutError, match="stop()"):
        panel.wait(0.01)
    panel.stop()
    assert panel.wait(60).stop_reason == "stopped"


# --- editing the architecture ---------------------------------------------------------------


def test_add_and_remove_layers(sets):
    panel = TrainingPanel(*sets)
    panel.add_layer_buttons["H"].click()
    assert panel.widths["H"].value == "160, 128, 96, 96"
    for _ in range(3):
        panel.remove_layer_buttons["H"].click()
    assert panel.widths["H"].value == "160"
    panel.remove_layer_buttons["H"].click()  # the last layer stays
    assert panel.widths["H"].value == "160" and "at least one hidden layer" in panel.message_text
    panel.widths["C"].value = "64, x"
    panel.add_layer("C")
    assert panel.widths["C"].value == "64, x" and "Cannot add a layer" in panel.message_text
    panel.widths["N"].value = ""
    panel.add_layer("N")
    assert panel.widths["N"].value == "64" and panel.message_text == ""
    panel.widths["O"].value = format_widths([8] * MAX_LAYERS)
    panel.add_layer("O")
    assert panel.widths["O"].value == format_widths([8] * MAX_LAYERS) and "already has" in panel.message_text


def test_reset_buttons_and_restore_keep_the_runs(sets):
    panel = make_panel(sets, background=False, widths="8")
    panel.activation.value, panel.optimizer.value, panel.lr.value = "gelu", "adam", 3e-3
    panel.train_button.click()
    panel.reset_architecture_button.click()
    panel.reset_settings_button.click()
    assert panel.read_spec() == ArchitectureSpec.course()
    assert panel.read_config() == default_config(num_threads=1)
    assert len(panel.runs) == 1
    panel.restore(1)
    assert panel.read_spec() == panel.runs[0].spec and panel.read_config() == panel.runs[0].config
    with pytest.raises(ValueError, match="No run 7"):
        panel.restore(7)


def test_the_table_compares_the_runs_of_the_session(sets):
    panel = make_panel(sets, background=False, widths="8")
    panel.train_button.click()
    panel.widths["H"].value = "32, 32"
    panel.optimizer.value, panel.schedule.value = "adam", "cosine"
    panel.train_button.click()
    frame = panel.runs_frame()
    assert frame["run"].tolist() == [1, 2]
    assert frame["layers"].tolist() == ["all 8", "H 32-32 · C,N,O 8"]
    assert frame["optimizer"].tolist() == [default_config().optimizer, "adam"]
    assert frame["schedule"].tolist()[1] == "cosine"
    assert frame["parameters"].tolist() == [r.spec.num_parameters() for r in panel.runs]
    assert frame["best val RMSE (kcal/mol)"].tolist() == [r.best_val_rmse for r in panel.runs]
    assert panel.table.value.count("<tr") == 3  # header + two runs


def test_draw_learning_curves_shows_earlier_runs_and_the_target(sets):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panel = make_panel(sets, background=False, widths="8")
    panel.train_button.click()
    panel.train_button.click()
    fig, ax = plt.subplots()
    draw_learning_curves(ax, panel.runs[1].result.history, previous=[panel.runs[0]], title="x")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "run 1 (validation)" in labels and "1 kcal/mol" in labels
    assert "training" in labels and "validation" in labels
    assert ax.get_yscale() == "log"
    plt.close(fig)


# --- in a real kernel -------------------------------------------------------------------------


KERNEL_SETUP = textwrap.dedent("""
    import torch
    from anibook_utils.data import load_dataset, split_dataset
    from anibook_utils.widgets import TrainingPanel
    data = load_dataset(download=False)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:1200]
    panel = TrainingPanel(*split_dataset(data.subset(index), 0.75, seed=0), num_threads=1,
                          redraw_interval=0.2)
    for box in panel.widths.values():
        box.value = "16"
    panel.epochs.value = 100_000
    display(panel)
""")


def test_in_a_kernel_training_leaves_the_kernel_free_and_the_display_live():
    """Train returns at once, other cells run meanwhile, and the widgets receive updates
    (comm messages from the training thread) while the run goes on; Stop ends it."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(Path(__file__).parent))
    try:
        def execute(code: str, timeout: float = 120, **kwargs) -> tuple[dict, float]:
            start = time.perf_counter()
            msg_id = kc.execute(code, **kwargs)
            while True:
                reply = kc.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply["content"], time.perf_counter() - start

        reply, _ = execute(KERNEL_SETUP)
        assert reply["status"] == "ok", reply
        reply, _ = execute("import json; print('IDS', json.dumps([panel.progress.model_id, panel.curve.model_id]))")
        reply, seconds = execute("panel.train_button.click()")
        assert reply["status"] == "ok" and seconds < 5
        deadline = time.monotonic() + 120  # two epochs, however loaded the machine
        while True:  # cells run while training goes on, each answered at once
            reply, seconds = execute("", user_expressions={"state": "(panel.running, panel.progress.value)"})
            assert reply["status"] == "ok" and seconds < 5, reply
            running, epochs_done = ast.literal_eval(reply["user_expressions"]["state"]["data"]["text/plain"])
            assert running, "the run ended before Stop"
            if epochs_done >= 2:
                break
            assert time.monotonic() < deadline, "two epochs did not finish in 120 s"
            time.sleep(0.5)
        reply, _ = execute("panel.stop_button.click(); run = panel.wait(60); "
                           "assert run.stop_reason == 'stopped', run.stop_reason; print('EPOCHS', run.epochs_run)")
        assert reply["status"] == "ok", reply

        ids, epochs_run, updates, errors = None, None, {}, []
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=2)
            except queue.Empty:
                break
            content = msg["content"]
            if msg["msg_type"] == "stream":
                for line in content["text"].splitlines():
                    if line.startswith("IDS "):
                        ids = json.loads(line[4:])
                    elif line.startswith("EPOCHS "):
                        epochs_run = int(line[7:])
            elif msg["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
                updates.setdefault(content["comm_id"], []).append(content["data"]["state"])
            elif msg["msg_type"] == "error":
                errors.append(content["evalue"])
        assert not errors, errors
        progress_id, curve_id = ids
        progress_values = [s["value"] for s in updates.get(progress_id, []) if "value" in s]
        assert epochs_run >= 2 and progress_values[-1] == epochs_run
        assert len(progress_values) >= epochs_run  # one update per epoch, sent from the thread
        assert len(updates.get(curve_id, [])) >= 2  # the curve was redrawn during the run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_rows_render_missing_values(sets):
    panel = make_panel(sets, epochs=10_000)
    panel.train_button.click()
    panel.stop()  # before the first epoch ends: no best epoch, no time to target
    run = panel.wait(60)
    assert run.epochs_run == 0
    assert math.isnan(run.best_val_rmse) and run.result.best_epoch is None
    assert run.seconds_to_target is None
    assert "–" in panel.table.value and "no epoch finished" in panel.status.value
    assert run.stop_reason == "stopped" and "stopped" in panel.runs_frame()["status"].tolist()


def test_the_module_names_its_chapter():
    import anibook_utils.widgets as widgets

    assert "chapter 7" in widgets.__doc__.splitlines()[0]
    assert sys.modules["anibook_utils.widgets"] is widgets
