"""The command-line trainer (chapter 10): its run files, its errors, and one real run.

Runs with torchrun are in tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anibook_utils.__main__ import main as cli
from anibook_utils.cli_train import TrainerConfigError, read_config
from anibook_utils.data import BOOK_SPLIT

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
[data]
name = "ani_gdb_s01"
conformations = 400
[model]
hidden = { H = [16], C = [16], N = [16], O = [16] }
[train]
epochs = 2
batch_size = 64
device = "cpu"
num_threads = 1
[run]
checkpoint_dir = "CHECKPOINTS"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text.replace("CHECKPOINTS", str(tmp_path / "checkpoints")))
    return path


def test_the_example_run_file_reads():
    cfg = read_config(ROOT / "examples" / "s01.toml")
    assert cfg.data.name == "ani_gdb_s01" and cfg.data.split == BOOK_SPLIT and not cfg.data.stream
    assert cfg.spec.hidden["H"] == (160, 128, 96) and cfg.train.epochs == 40 and cfg.train.optimizer == "adamw"
    assert cfg.checkpoint_dir == "runs/s01" and cfg.resume


def test_overrides_and_streaming_imply_in_step_aevs(tmp_path):
    cfg = read_config(write(tmp_path, GOOD.replace("conformations = 400", "")),
                      ["data.stream=true", "train.epochs=5", "train.optimizer=adam", "data.split=[0.8, 0.2]"])
    assert cfg.data.stream and cfg.train.feed == "in_step" and cfg.train.epochs == 5
    assert cfg.train.optimizer == "adam" and cfg.data.split == (0.8, 0.2)


BAD = [
    ("[data\nname = 1", "is not valid TOML"),
    (GOOD + "\n[extra]\nx = 1\n", "Unknown table(s) ['extra']"),
    (GOOD.replace("epochs = 2", "epoch = 2"), "Unknown key(s) ['epoch'] in [train]"),
    (GOOD.replace("epochs = 2", "epochs = 0"), "epochs must be a positive integer"),
    (GOOD.replace("[train]", "[train]\npreset = \"quick\""), "preset 'quick' is unknown"),
    (GOOD.replace("H = [16]", "H = []"), "has no hidden layers"),
    (GOOD.replace('name = "ani_gdb_s01"', 'name = "ani_gdb_s01"\npaths = ["x.h5"]'), "exactly one of"),
    (GOOD.replace("conformations = 400", "split = [0.8, 0.3]"), "adding up to 1"),
    (GOOD.replace("conformations = 400", "conformations = 400\nstream = true"), "in memory only"),
    (GOOD.replace('checkpoint_dir = "CHECKPOINTS"', ""), "checkpoint_dir is required"),
    (GOOD.replace('"ani_gdb_s01"', '"ani_gdb_s99"'), "Unknown data set 'ani_gdb_s99'"),
    (GOOD.replace('name = "ani_gdb_s01"', 'paths = ["no_such_file.h5"]'), "No data file at"),
    (GOOD.replace("conformations = 400", "conformations = 400000"), "ask for fewer"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_run_files_get_a_clear_message_and_exit_code_2(tmp_path, capsys, text, message):
    assert cli(["train", "--config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_bad_overrides_and_missing_files(tmp_path, capsys):
    assert cli(["train", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "No run file at" in capsys.readouterr().err
    with pytest.raises(TrainerConfigError, match="SECTION.KEY=VALUE"):
        read_config(write(tmp_path, GOOD), ["epochs=3"])


def test_a_run_alone_writes_log_checkpoints_potential_and_test_rmse(tmp_path, capsys):
    config = write(tmp_path, GOOD)
    assert cli(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "test set (40 conformations" in out
    # the header says the settings in one short line, not a config's repr
    training = next(line for line in out.splitlines() if line.startswith("training: "))
    assert "2 epochs, batches of" in training and "TrainConfig(" not in out and len(training) < 160
    folder = tmp_path / "checkpoints"
    assert {"latest.pt", "best.pt", "log.jsonl", "potential.pt", "summary.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sizes"] == [320, 40, 40] and summary["test"]["rmse"] > 0 and summary["processes"] == 1
    assert len((folder / "log.jsonl").read_text().splitlines()) == 2
    # the same command again resumes: nothing left to train, the same weights
    before = torch.load(folder / "latest.pt", weights_only=True)["model"]
    assert cli(["train", "--config", str(config)]) == 0
    after = torch.load(folder / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "epoch " not in capsys.readouterr().out.split("checkpoints in")[1].split("best validation")[0]


def test_the_command_prints_no_traceback_for_a_bad_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "anibook_utils", "train", "--config",
                             str(write(tmp_path, GOOD.replace("epochs = 2", "epochs = -1")))],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: epochs must be a positive integer, got -1."


def test_a_torchani_data_set_is_converted_once_and_streamed(tmp_path, monkeypatch, capsys):
    """``torchani = "ANI1x"`` with TorchANI's download replaced by a small file written here."""
    from test_streaming import torchani_file

    from anibook_utils import cli_train

    source = torchani_file(tmp_path / "ani1x_like.h5")
    asked = []
    monkeypatch.setattr(cli_train, "fetch_torchani", lambda name, lot: asked.append((name, lot)) or source)
    monkeypatch.setenv("ANIBOOK_DATA_DIR", str(tmp_path / "data"))
    text = GOOD.replace('name = "ani_gdb_s01"\nconformations = 400', 'torchani = "ANI1x"\nsplit = [0.6, 0.2, 0.2]')
    text = text.replace("batch_size = 64", "batch_size = 4\nforce_weight = 0.1")
    config = write(tmp_path, text)
    assert cli(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ANI1x (streamed from disk)" in out and "force_rmse" in out
    assert asked == [("ANI1x", "wb97x-631gd")] and (tmp_path / "data" / "ani1x-wb97x-631gd.h5").is_file()
    assert cli(["train", "--config", str(config), "--set", "run.resume=false"]) == 0  # converted file reused
    assert len(asked) == 1


def test_fetch_torchani_names_the_data_sets_it_knows():
    from anibook_utils.streaming import fetch_torchani

    with pytest.raises(ValueError, match="ANI1x"):
        fetch_torchani("ANI3x")


def test_launch_runs_the_command_in_a_subprocess_and_reads_what_rank_0_wrote(tmp_path):
    from anibook_utils.cli_train import launch

    run = launch(write(tmp_path, GOOD), overrides=["train.epochs=1"], timeout=600)
    assert run.returncode == 0, run.output[-2000:]
    assert run.typed == "python -m anibook_utils train --config run.toml --set train.epochs=1 --set train.num_threads=1"
    assert [r["epoch"] for r in run.log] == [1] and run.summary["test"]["rmse"] > 0 and run.wall_s > 0
