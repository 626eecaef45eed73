"""Pool-based active learning (anibook_utils.active_learning, chapter 11): the pool, the loop's
bookkeeping, its strategies, its stored results, the panel and the pool's labels."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from anibook_utils import active_learning as al
from anibook_utils.data import HARTREE_TO_KCAL, dataset_info, load_dataset, sha256_of

TINY = al.LoopSettings(labels=(9, 15, 21), members=2, hidden=(4,), steps=16, batch_size=8)


@pytest.fixture(scope="module")
def fake_pool() -> al.Pool:
    """300 conformations of the bundled data set dressed up as a pool: per molecule, groups of
    two sources and temperatures (what the loop needs is the bookkeeping, not the physics)."""
    data = load_dataset("anibook_nms_s01")
    ids = data.molecule_ids.numpy()
    keep = np.concatenate([np.flatnonzero(ids == m)[:100] for m in range(3)])
    data = data.subset(torch.as_tensor(keep))
    molecule = np.array(data.molecule_names)[data.molecule_ids.numpy()]
    position = np.arange(len(data)) % 100
    source = np.where(position < 40, "nms", np.where(position < 90, "md", "stretch"))
    temperature = np.where(source == "stretch", np.nan, np.where(position % 2 == 0, 1000.0, 3000.0))
    group = np.array([f"{m}-{s}-{t}" for m, s, t in zip(molecule, source, temperature)])
    return al.Pool(data, molecule, source, temperature, group)


@pytest.fixture(scope="module")
def split(fake_pool) -> al.PoolSplit:
    return al.split_pool(fake_pool, test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def finished(fake_pool, split) -> dict[str, al.ActiveLearner]:
    learners = {s: al.ActiveLearner(fake_pool, split, TINY, strategy=s, seed=1) for s in al.STRATEGIES}
    for learner in learners.values():
        learner.run()
    return learners


# -- the split ---------------------------------------------------------------------------------


def test_split_is_disjoint_stratified_and_leaves_the_scans_out(fake_pool, split):
    assert not set(split.candidates) & set(split.test)
    assert set(fake_pool.source[split.candidates]) == set(fake_pool.source[split.test]) == {"nms", "md"}
    for group in set(fake_pool.group[fake_pool.source != "stretch"]):
        n = int((fake_pool.group == group).sum())
        assert int((fake_pool.group[split.test] == group).sum()) == round(0.2 * n)
    again = al.split_pool(fake_pool, test_fraction=0.2, seed=0)
    assert np.array_equal(again.test, split.test)
    with pytest.raises(ValueError, match="test_fraction"):
        al.split_pool(fake_pool, test_fraction=1.0)
    with pytest.raises(ValueError, match="Unknown source"):
        al.split_pool(fake_pool, sources=("dft",))
    with pytest.raises(ValueError, match="both candidates and test"):
        al.PoolSplit(np.array([1, 2]), np.array([2, 3]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=(4, 8)), "starting at 6"),
    (dict(labels=(12, 12)), "increasing"),
    (dict(members=1), "2 to 50 members"),
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(lr=-1.0), "lr must be"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        al.LoopSettings(**kwargs)


def test_settings_keep_the_step_budget():
    settings = al.LoopSettings(steps=400, batch_size=16)
    assert settings.config(16).epochs == 400 and settings.config(160).epochs == 40
    assert settings.config(10_000).epochs == 1


# -- the loop's bookkeeping -----------------------------------------------------------------------


def test_labels_are_counted_and_the_test_set_never_queried(finished, split, fake_pool):
    for learner in finished.values():
        rows = learner.rows
        assert [r["labels"] for r in rows] == list(TINY.labels)
        assert [r["round"] for r in rows] == [0, 1, 2]
        for row, nxt in zip(rows, rows[1:]):
            assert len(row["queried"]) == nxt["labels"] - row["labels"]
            assert not set(row["queried"]) & set(row["labelled"])
            assert sorted(row["labelled"] + row["queried"]) == sorted(nxt["labelled"])
        assert rows[-1]["queried"] == []
        for row in rows:
            labelled = set(row["labelled"])
            assert len(labelled) == row["labels"] == row["train_size"] + row["val_size"]
            assert not labelled & set(split.test.tolist())
            assert set(row["validation"]) <= labelled
            assert labelled <= set(split.candidates.tolist())
        seed_set = np.array(rows[0]["labelled"])
        assert sorted(np.unique(fake_pool.molecule[seed_set], return_counts=True)[1]) == [3, 3, 3]
        validation = np.array(rows[0]["validation"])
        assert set(fake_pool.molecule[validation]) == set(fake_pool.molecule)


def test_strategies_share_the_seed_set_and_then_differ(finished):
    qbc, random = finished["qbc"].rows, finished["random"].rows
    assert qbc[0]["labelled"] == random[0]["labelled"]
    assert qbc[0]["test_rmse"] == random[0]["test_rmse"]  # same labels, same members: same committee
    assert set(qbc[0]["queried"]) != set(random[0]["queried"])


def test_qbc_queries_the_most_uncertain_candidates_of_each_molecule(fake_pool, split):
    learner = al.ActiveLearner(fake_pool, split, TINY, strategy="qbc", seed=2)
    learner.train_round()
    left = learner.unlabelled()
    rho = learner.ensemble.predict(fake_pool.data.subset(left)).rho_kcal
    picked = learner.query(6)
    molecules = fake_pool.molecule[left]
    expected = set()
    for molecule, share in al._allocate(molecules, 6).items():
        where = np.flatnonzero(molecules == molecule)
        expected |= set(left[where[np.argsort(-rho[where])[:share]]].tolist())
    assert set(picked.tolist()) == expected
    assert sorted(np.unique(fake_pool.molecule[picked], return_counts=True)[1]) == [2, 2, 2]
    assert sum(learner.rows[-1]["queried_origin"].values()) == 6


def test_global_qbc_ranks_all_candidates_together(fake_pool, split):
    settings = al.LoopSettings(**{**TINY.to_dict(), "per_molecule": False})
    learner = al.ActiveLearner(fake_pool, split, settings, strategy="qbc", seed=2)
    learner.train_round()
    left = learner.unlabelled()
    rho = learner.ensemble.predict(fake_pool.data.subset(left)).rho_kcal
    picked = learner.query(5)
    assert set(picked.tolist()) == set(left[np.argsort(-rho)[:5]].tolist())
    assert learner.rows[-1]["queried_rho_kcal"] == pytest.approx(np.sort(rho)[::-1][:5].mean())


def test_allocation_is_proportional_and_exact():
    groups = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    assert al._allocate(groups, 10) == {"a": 5, "b": 3, "c": 2}
    assert sum(al._allocate(groups, 7).values()) == 7
    assert al._allocate(groups, 100) == {"a": 50, "b": 30, "c": 20}


def test_random_queries_are_reproducible_and_fresh(fake_pool, split):
    picks = []
    for _ in range(2):
        learner = al.ActiveLearner(fake_pool, split, TINY, strategy="random", seed=3)
        learner.train_round()
        picks.append(learner.query(6))
    assert np.array_equal(*picks)
    assert not set(picks[0].tolist()) & set(learner.rows[0]["labelled"])


def test_the_loop_refuses_what_it_cannot_do(fake_pool, split):
    with pytest.raises(ValueError, match="Unknown strategy"):
        al.ActiveLearner(fake_pool, split, TINY, strategy="greedy")
    with pytest.raises(ValueError, match="candidates"):
        al.ActiveLearner(fake_pool, split, al.LoopSettings(labels=(9, 10_000)))
    learner = al.ActiveLearner(fake_pool, split, TINY, strategy="qbc")
    with pytest.raises(RuntimeError, match="Train a round first"):
        learner.query(3)
    with pytest.raises(RuntimeError, match="test set must never be queried"):
        learner._reveal(split.test[:1])
    with pytest.raises(RuntimeError, match="twice"):
        learner._reveal(np.array(learner.labelled[:1]))


# -- stored results ---------------------------------------------------------------------------------


def test_results_are_stored_reused_and_resumed(fake_pool, split, finished, tmp_path, monkeypatch):
    path = tmp_path / "loops.json"
    curves = al.run_active_learning(fake_pool, split, TINY, seeds=(1,), path=path, progress=False)
    assert len(curves) == 2 * len(TINY.labels)
    for strategy, learner in finished.items():  # the same loops as run by hand
        rows = [r for r in curves.rows if r["strategy"] == strategy]
        assert [r["test_rmse"] for r in rows] == [r["test_rmse"] for r in learner.rows]
    stored = json.loads(path.read_text())
    assert stored["format"] == al.RESULTS_FORMAT and len(stored["runs"]) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("a stored loop was trained again")

    with monkeypatch.context() as m:
        m.setattr(al.ActiveLearner, "train_round", refuse)
        reused = al.run_active_learning(fake_pool, split, TINY, seeds=(1,), path=path, progress=False)
    assert reused.rows == curves.rows

    # an interruption after the first round's query: the loop continues from there
    for key, rows in stored["runs"].items():
        stored["runs"][key] = rows[:1]
    path.write_text(json.dumps(stored))
    trained = []
    original = al.ActiveLearner.train_round
    monkeypatch.setattr(al.ActiveLearner, "train_round",
                        lambda self, **kw: trained.append(self.round) or original(self, **kw))
    resumed = al.run_active_learning(fake_pool, split, TINY, seeds=(1,), path=path, progress=False)
    assert trained == [1, 2, 1, 2]
    assert [r["test_rmse"] for r in resumed.rows] == [r["test_rmse"] for r in curves.rows]


def test_learning_curves_compare_label_counts():
    rows = [{"strategy": s, "seed": seed, "round": r, "labels": n, "test_rmse": rmse}
            for s, values in (("random", (8.0, 6.0, 4.0, 3.0)), ("qbc", (8.0, 4.0, 2.5, 2.0)))
            for seed in (0, 1) for r, (n, rmse) in enumerate(zip((10, 20, 40, 80), values))]
    curves = al.LearningCurves(rows)
    assert curves.curve("qbc")["mean"].tolist() == [8.0, 4.0, 2.5, 2.0]
    assert curves.labels_to_reach("qbc", 3.0) == 40
    assert curves.labels_to_reach("random", 1.0) is None
    comparison = curves.comparison()
    assert comparison["baseline_final_rmse"] == 3.0 and comparison["labels_needed"] == 40
    assert comparison["label_fraction"] == 0.5
    with pytest.raises(KeyError, match="No rows for strategy"):
        curves.curve("greedy")


# -- the panel ---------------------------------------------------------------------------------------


def test_panel_runs_one_more_round(fake_pool, split):
    learners = [al.ActiveLearner(fake_pool, split, TINY, strategy=s, seed=4) for s in al.STRATEGIES]
    for learner in learners:
        learner.train_round()
    panel = al.RoundPanel(learners, query=8)
    assert bytes(panel.image.value).startswith(b"\x89PNG")
    assert panel.run_round()
    assert [len(learner.rows) for learner in learners] == [2, 2]
    assert [learner.rows[-1]["labels"] for learner in learners] == [17, 17]
    assert "Round 2" in panel.status.value
    with pytest.raises(ValueError, match="trained at least one round"):
        al.RoundPanel([al.ActiveLearner(fake_pool, split, TINY)])


def test_panel_says_when_the_pool_is_exhausted(fake_pool, split):
    learner = al.ActiveLearner(fake_pool, split, TINY, strategy="random", seed=5)
    learner.train_round()
    learner.query(len(learner.unlabelled()))
    learner.train_round()
    panel = al.RoundPanel([learner])
    assert not panel.run_round()
    assert "no candidates left" in panel.status.value


# -- the bundled pool --------------------------------------------------------------------------------


def test_bundled_pool_is_registered_and_described():
    info = dataset_info(al.POOL_NAME)
    assert info.bundled and sha256_of(al.POOL_PATH) == info.sha256
    assert al.POOL_PATH.stat().st_size == info.size < 1_000_000
    pool = al.load_pool()
    assert len(pool) == info.conformations
    assert set(pool.source) == set(al.SOURCES)
    assert set(pool.molecule) == {"CH4", "NH3", "H2O"}
    recipe = al.PoolRecipe()
    assert sorted(set(pool.temperature[pool.source == "nms"])) == sorted(recipe.nms_temperatures)
    assert sorted(set(pool.temperature[pool.source == "md"])) == sorted(recipe.md_temperatures)
    assert np.isnan(pool.temperature[pool.source == "stretch"]).all()
    with h5py.File(al.POOL_PATH, "r") as f:
        assert json.loads(f.attrs["recipe"]) == recipe.to_dict()
        assert f.attrs["method"] == "wb97x" and f.attrs["basis"] == "6-31G(d)" and bool(f.attrs["cart"])
        assert "generate-pool" in f.attrs["command"]


def test_pool_labels_recomputed_with_pyscf():
    """A few of the bundled labels, one of each source, recomputed at ωB97X/6-31G(d)."""
    pyscf = pytest.importorskip("pyscf", reason="optional extra: pip install anibook-utils[reference]")
    before = pyscf.lib.num_threads()
    pyscf.lib.num_threads(1)
    try:
        pool = al.load_pool()
        rng = np.random.default_rng(0)
        picks = [int(rng.choice(np.flatnonzero(pool.source == s))) for s in al.SOURCES]
        recomputed = al.recompute_labels(pool, picks)
    finally:
        pyscf.lib.num_threads(before)
    stored = pool.data.energies[picks].numpy()
    assert np.abs(recomputed - stored).max() * HARTREE_TO_KCAL < 0.01


# -- labelling in parallel: shares and their merge ----------------------------------------------------


def test_shares_keep_the_groups_in_order_and_balance_them():
    from types import SimpleNamespace

    groups = {f"g{i}": SimpleNamespace(coordinates=np.zeros((n, 3, 3))) for i, n in enumerate([50] * 33 + [16] * 3)}
    for parts in (1, 2, 4):
        shares = al._shares(groups, parts)
        assert len(shares) == parts
        assert [name for share in shares for name in share] == list(groups)
        sizes = [sum(len(g.coordinates) for g in share.values()) for share in shares]
        assert max(sizes) - min(sizes) <= 100


def test_merged_parts_read_as_one_pool(tmp_path):
    """Two workers' files (written in label_conformations' layout) make one pool with every group."""
    parts, order = [tmp_path / "a.h5", tmp_path / "b.h5"], ["H2O-nms-0300K", "H2O-md-1000K", "H2O-stretch"]
    rng = np.random.default_rng(0)
    for path, names in zip(parts, (order[:1], order[1:])):
        with h5py.File(path, "w") as f:
            f.attrs["method"] = "wb97x"
            f.attrs["recipe"] = json.dumps({"seed": 0})
            for name in names:
                g = f.create_group(f"{al.POOL_NAME}/{name}")
                source = name.split("-")[1]
                g.attrs.update({"molecule": "H2O", "source": source})
                if source != "stretch":
                    g.attrs["temperature_K"] = float(name.split("-")[2][:-1])
                g["species"] = np.array(["O", "H", "H"], dtype="S")
                g["coordinates"] = (np.array([[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
                                    + rng.normal(0, 0.02, (4, 3, 3))).astype(np.float32)
                g["energies"] = -76.38 + rng.normal(0, 0.001, 4)
    merged = tmp_path / "pool.h5"
    al._merge_parts(merged, parts, order)
    with h5py.File(merged, "r") as f:
        assert sorted(f[al.POOL_NAME]) == sorted(order) and f.attrs["method"] == "wb97x"
    pool = al.load_pool(merged)
    assert len(pool) == 12 and pool.counts() == {"nms": 4, "md": 4, "stretch": 4}
    assert sorted(set(pool.label())) == ["md 1000 K", "nms 300 K", "stretch"]
