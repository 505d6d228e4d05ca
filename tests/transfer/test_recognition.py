"""The recognition-transfer family: metrics, splits, the sweep and its solvers, the readers
on their synthetic twins, the feature cache, resume, and the runner."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import BadInput, ConfigError, InputNotFound, Interrupted
from common.splits import caltech101_split_lines, random_val_indices
from synthetic.recognition import write_recognition
from transfer.recognition import datasets as D
from transfer.recognition import run as rec_run
from transfer.recognition.logreg import (
    NoCSelected,
    SklearnSolver,
    fit_and_score,
    make_solver,
    sweep,
    wd_grid,
)
from transfer.recognition.metrics import (
    accuracy,
    mean_ap11,
    mean_per_class_accuracy,
    voc07_class_ap,
)
from transfer.recognition.protocols import resolve

# --- metrics, by hand ---------------------------------------------------------------------


def test_voc07_11_point_ap_by_hand():
    # ranked: TP (P 1, R .5), FP (P .5, R .5), TP (P 2/3, R 1), FP (P .5, R 1):
    # t = 0 .. 0.5 -> max precision 1; t = 0.6 .. 1 -> 2/3: AP = (6 + 5 * 2/3) / 11
    ap = voc07_class_ap(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx((6 + 5 * 2 / 3) / 11)
    # a perfect ranking is 1; two classes average
    y = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])
    s = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.1, 0.1]])
    assert mean_ap11(y, s) == pytest.approx(100 * ((6 + 5 * 2 / 3) / 11 + (6 + 5 * 0.5) / 11) / 2)


def test_accuracy_and_mean_per_class_accuracy_by_hand():
    y, pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert accuracy(y, pred) == pytest.approx(60.0)
    assert mean_per_class_accuracy(y, pred) == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    # class 2 predicted but absent from the truth: ssl-transfer's confusion matrix has an
    # empty row -> NaN; the flag averages over the classes that have samples
    y, pred = np.array([0, 0, 1]), np.array([0, 2, 1])
    assert np.isnan(mean_per_class_accuracy(y, pred))
    assert mean_per_class_accuracy(y, pred, absent_class_nan=False) == pytest.approx(75.0)


# --- grid and splits ----------------------------------------------------------------------


def test_the_45_weight_decays_and_c_is_one_over_wd():
    grid = wd_grid()
    assert len(grid) == 45 and grid == sorted(grid)
    assert grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    assert grid[22] == pytest.approx(10**-0.5, rel=1e-6)  # the middle: 10^((-6 + 5) / 2)
    assert grid == [w.item() for w in torch.logspace(-6, 5, 45)]  # float32, as ssl-transfer
    assert np.allclose(grid, np.logspace(-6, 5, 45), rtol=1e-6)


def test_the_validation_split_is_ssl_transfers():
    train, val = random_val_indices(10)
    assert val == [2, 8] and train == [4, 9, 1, 6, 7, 3, 0, 5]  # numpy seed 0, by hand
    for n in (7, 100, 1001):  # the official lines, transcribed: global seed, list shuffle
        indices = list(range(n))
        np.random.seed(0)
        np.random.shuffle(indices)
        split = int(np.floor(0.2 * n))
        assert random_val_indices(n) == (indices[split:], indices[:split])


def test_caltech101_split_is_the_official_algorithm(tmp_path):
    folder = tmp_path / "101_ObjectCategories"
    counts = {"BACKGROUND_Google": 9, "Faces": 12, "airplanes": 7}
    for c, n in counts.items():
        (folder / c).mkdir(parents=True)
        for i in range(n):
            (folder / c / f"image_{i + 1:04d}.jpg").write_bytes(b"x")
    train, test = caltech101_split_lines(folder, per_class=6)
    # transcription of create_caltech101_splits: one global stream, labels in sorted order
    ids = [f"{c}/image_{i + 1:04d}.jpg" for c in sorted(counts) for i in range(counts[c])]
    labels = [k for k, c in enumerate(sorted(counts)) for _ in range(counts[c])]
    np.random.seed(0)
    idx = []
    for k in range(3):
        idx.extend(np.sort(np.random.choice([i for i, x in enumerate(labels) if x == k], 6)))
    assert train == [f"{ids[i]} {labels[i]}" for i in idx]
    assert sorted(test) == sorted(f"{ids[i]} {labels[i]}" for i in set(range(28)) - set(idx))
    assert len(train) == 18 and len(set(train)) < 18  # drawn with replacement: duplicates


# --- the sweep ----------------------------------------------------------------------------


class ScriptedSolver:
    """Predicts a fixed class per C so each fit's val score is scripted; records fits."""

    def __init__(self, script: dict):
        self.script, self.fits, self.loaded = script, [], None
        self.last = None

    def fit(self, X, y, C):
        self.fits.append(C)
        self.last = C

    def predict(self, X):
        right = self.script[len(self.fits) - 1]  # how many of the 4 val samples are right
        return np.array([0] * right + [1] * (4 - right))

    def state(self):
        return {"after": len(self.fits)}

    def load_state(self, state):
        self.loaded = state


def test_sweep_order_strict_improvement_and_ties_keep_the_earlier_c():
    grid = [1e-2, 1e-1, 1.0, 10.0, 100.0]
    solver = ScriptedSolver({0: 1, 1: 3, 2: 3, 3: 2, 4: 3})  # fit 2 ties fit 1
    val = (np.zeros((4, 2)), np.zeros(4, np.int64))
    seen = []
    state = sweep(solver, grid, val, val, "accuracy", after_fit=lambda s: seen.append(s.solver))
    assert solver.fits == [100.0, 10.0, 1.0, 0.1, 0.01]  # wd ascending = C descending
    assert state.scores == [25.0, 75.0, 75.0, 50.0, 75.0]
    assert state.best_C == 10.0 and state.best_score == 75.0  # the tie kept the earlier C
    assert seen == [{"after": k} for k in range(1, 6)]  # the warm state saved after each fit
    with pytest.raises(NoCSelected, match="no weight decay scored above 0"):
        sweep(ScriptedSolver(dict.fromkeys(range(5), 0)), grid, val, val, "accuracy")


def test_sweep_warm_starts_each_fit_from_the_previous_one():
    """Each sklearn fit starts at the coefficients the previous C ended with: one iteration
    per fit from a warm start moves further than one from zeros."""
    X, y = _clusters(200, 0.6, seed=3)
    warm = SklearnSolver(max_iter=1)
    for C in (10.0, 1.0):
        warm.fit(X, y, C)
    cold = SklearnSolver(max_iter=1)
    cold.fit(X, y, 1.0)
    assert not np.allclose(warm.clf.coef_, cold.clf.coef_)
    assert warm.clf.score(X, y) >= cold.clf.score(X, y)


def test_an_interrupted_sweep_resumes_to_the_same_numbers():
    tr, va = _clusters(120, 0.5, seed=1), _clusters(60, 0.5, seed=2)
    grid = wd_grid(12)
    whole = sweep(SklearnSolver(), grid, tr, va, "accuracy")
    saved = {}

    def stop_after_5(s):
        saved["state"] = pickle.loads(pickle.dumps(s))
        if len(s.scores) == 5:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        sweep(SklearnSolver(), grid, tr, va, "accuracy", after_fit=stop_after_5)
    resumed = sweep(SklearnSolver(), grid, tr, va, "accuracy", state=saved["state"])
    assert resumed.scores == whole.scores and resumed.best_C == whole.best_C


def _clusters(n, sep, seed, d=24, k=4):
    mu = np.random.default_rng(100).normal(0, 1, (k, d)) * sep
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (mu[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


@pytest.mark.parametrize("sep", [0.35, 0.6])
def test_the_torch_solver_selects_the_same_c_and_test_metric_as_sklearn(sep):
    """Random features: the PyTorch L-BFGS picks the same C; the test accuracies agree
    within 1 point (one sample in 200 may flip)."""
    tr, va, te = (_clusters(n, sep, seed) for n, seed in ((400, 1), (150, 2), (200, 3)))
    out = {}
    for name in ("sklearn", "torch"):
        solver = make_solver(name, 100, 1e-4, True)
        state = sweep(solver, wd_grid(), tr, va, "accuracy")
        trainval = (np.concatenate([tr[0], va[0]]), np.concatenate([tr[1], va[1]]))
        out[name] = (state.best_C, fit_and_score(solver, state.best_C, trainval, te, "accuracy"))
    assert out["torch"][0] == out["sklearn"][0]
    assert out["torch"][1] == pytest.approx(out["sklearn"][1], abs=1.0)


def test_the_fit_runs_in_float64_as_scikit_learn_0_24s_lbfgs():
    """scikit-learn 0.24 (ssl-transfer's) validated X with ``dtype=np.float64`` for lbfgs:
    float32 features were fit in float64. Transcribed: today's LogisticRegression on the
    features cast to float64 is our default, to the last bit; ``features_dtype float32``
    fits the float32 features as they are (today's scikit-learn), which ends elsewhere."""
    from sklearn.linear_model import LogisticRegression

    X, y = _clusters(300, 2.0, seed=5)  # nearly separable: large C stops at 100 iterations
    assert X.dtype == np.float32
    C = 1e4
    official = LogisticRegression(solver="lbfgs", max_iter=100, tol=1e-4 / len(y), C=C)
    official.fit(X.astype(np.float64), y)  # what 0.24's check_X_y(dtype=float64) handed on
    ours = make_solver("sklearn", 100, 1e-4, True)
    ours.fit(X, y, C)
    assert ours.clf.coef_.dtype == np.float64
    assert np.array_equal(ours.clf.coef_, official.coef_)
    assert np.array_equal(ours.decision(X), official.decision_function(X.astype(np.float64)))
    f32 = make_solver("sklearn", 100, 1e-4, True, dtype="float32")
    f32.fit(X, y, C)
    assert f32.clf.coef_.dtype == np.float32
    assert not np.array_equal(f32.clf.coef_, official.coef_)
    torch_solver = make_solver("torch", 100, 1e-4, True, dtype="float32")
    torch_solver.fit(X, y, C)
    assert str(torch_solver.W.dtype) == "torch.float32"
    assert str(make_solver("torch", 100, 1e-4, True, device="cuda").dtype) == "torch.float64"


def test_features_dtype_is_a_protocol_setting_with_float64_by_default():
    assert resolve("manyshot_linear", False).features_dtype == "float64"
    assert resolve("manyshot_linear", False, ["features_dtype", "float32"]).features_dtype == (
        "float32"
    )
    with pytest.raises(ConfigError, match="features_dtype"):
        resolve("manyshot_linear", False, ["features_dtype", "float16"])


def test_legacy_binary_fit_is_the_old_two_way_softmax():
    """ssl-transfer's sklearn fit a binary problem as a 2-way softmax (both rows penalised,
    coef_ = row 1). Minimising that objective directly (scipy) gives row 1 = half of our
    legacy binomial fit's coefficients, so the decision scores rank alike."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (80, 5))
    y = (X[:, 0] + 0.5 * rng.normal(0, 1, 80) > 0).astype(np.int64)
    C = 0.3
    Y = np.stack([1 - y, y], 1)

    def old_objective(w):  # sum of log losses + ||W||^2 / (2 C), intercepts unpenalised
        W = w.reshape(2, 6)
        z = X @ W[:, :5].T + W[:, 5]
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(logp)
        loss = -(Y * logp).sum() + 0.5 / C * (W[:, :5] ** 2).sum()
        g = (p - Y).T @ np.hstack([X, np.ones((80, 1))])
        g[:, :5] += W[:, :5] / C
        return loss, g.ravel()

    w = minimize(old_objective, np.zeros(12), jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-10, "maxiter": 10000}).x.reshape(2, 6)  # fmt: skip
    ours = SklearnSolver(max_iter=10000, tol=1e-10)
    ours.fit(X, y, C)
    assert np.allclose(ours.clf.coef_[0], 2 * w[1, :5], atol=1e-4)
    assert np.allclose(w[0], -w[1], atol=1e-4)  # the symmetric optimum


# --- readers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    return write_recognition(root / "ssl"), write_recognition(root / "tv", layout="torchvision")


EXPECTED_SIZES = {"aircraft": (32, 12, 16), "caltech101": (19, 41), "cars": (32, 16),
                  "cifar10": (44, 16), "cifar100": (44, 16), "dtd": (32, 12, 16),
                  "flowers": (32, 12, 16), "food": (44, 16), "pets": (44, 16),
                  "sun397": (44, 16), "voc2007": (32, 12, 16)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(D.DATASETS))
def test_each_reader_reads_its_twin_in_both_layouts(name, twins):
    for root in twins:
        splits = {s: D.read_split(name, root, s) for s in D.source_splits(name)}
        assert tuple(len(v) for v in splits.values()) == EXPECTED_SIZES[name]
        for v in splits.values():
            if name == "voc2007":
                assert v.labels.shape[1] == 20 and set(np.unique(v.labels)) == {0, 1}
            else:
                assert sorted(set(v.labels.tolist())) == [0, 1, 2, 3]
    folders = {D.find_dataset(name, root)[1] for root in twins}
    assert "ssl-transfer" in folders


def test_readers_keep_ssl_transfers_labels(twins):
    root = twins[0]
    # VOC: "1" positive; "0" (difficult only) and "-1" negative
    main = root / "VOC2007/VOCdevkit/VOC2007/ImageSets/Main"
    first = (main / "aeroplane_train.txt").read_text().splitlines()
    v = D.read_split("voc2007", root, "train")
    flags = [int(line.split()[-1]) for line in first]
    assert 0 in flags and v.labels[:, 0].tolist() == [int(f == 1) for f in flags]
    # Aircraft: the variant name after the id, spaces kept ("Boeing 737-200")
    a = D.read_split("aircraft", root, "train")
    assert a.labels[(a.paths.index(next(p for p in a.paths if p.stem.startswith("1002"))))] == 2
    # Caltech101 with duplicates: the split file as written; dedup: unique lines
    dup = D.read_split("caltech101", root, "train", caltech101_split="with_duplicates")
    assert len(dup) == 20 and len(set(dup.paths)) == 19


def test_sun397_labels_ignore_a_class_name_in_the_data_path(twins, tmp_path):
    """ssl-transfer matched ``/<class>/`` on the joined path: under a folder named after a
    class that sorts first (here .../abbey/SUN397) every image became that class. The guard
    matches on the path inside the dataset folder."""
    import shutil

    root = tmp_path / "abbey"
    shutil.copytree(twins[0] / "SUN397", root / "SUN397")
    s = D.read_split("sun397", root, "train")
    assert s.labels.tolist() == D.read_split("sun397", twins[0], "train").labels.tolist()
    classes = sorted(line[3:] for line in (root / "SUN397/ClassName.txt").read_text().split())
    full = [D.sun397_label(str(p), classes) for p in s.paths]  # the official rule
    assert set(full) == {classes.index("abbey")} != set(s.labels.tolist())


def test_malformed_layouts_name_the_fix(twins, tmp_path):
    with pytest.raises(InputNotFound, match=r"Aircraft/data/images.*ssl-transfer.*torchvision"):
        D.find_dataset("aircraft", tmp_path)
    import shutil

    for folder in ("Cars", "CIFAR10", "Food"):
        shutil.copytree(twins[0] / folder, tmp_path / folder)
    (tmp_path / "Cars/devkit/cars_train_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(BadInput, match="cars_train_annos.mat: not a readable .mat"):
        D.read_split("cars", tmp_path, "train")
    (tmp_path / "CIFAR10/cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x02broken")
    with pytest.raises(BadInput, match="data_batch_3: not a CIFAR batch"):
        D.read_split("cifar10", tmp_path, "train")
    (tmp_path / "Food/food-101/meta/test.json").write_text("{not json")
    with pytest.raises(BadInput, match="test.json: unreadable"):
        D.read_split("food", tmp_path, "test")
    next((tmp_path / "Food/food-101/images").rglob("*.jpg")).unlink()
    with pytest.raises(BadInput, match="1 of 44 images listed .* are missing"):
        D.read_split("food", tmp_path, "train")


# --- a whole result, resume, runner -------------------------------------------------------


def _spec(tmp_path, twins, task, opts=(), seed_dir=None):
    from transfer.spec import SeedSpec

    return SeedSpec(protocol="manyshot_linear", protocol_name="manyshot_linear_smoke",
                    smoke=True, dataset="synthetic", shapes_root=None, weights="",
                    weights_info={"stem": "random_init_r18", "sha256": None, "meta": {}},
                    seed_index=0, seed=1000, seed_dir=str(seed_dir or tmp_path / task / "seed0"),
                    opts=list(opts), arch="resnet18", data=str(twins[0]), task=task,
                    cache_dir=str(tmp_path / "features"), family="recognition")  # fmt: skip


def test_an_interrupted_result_resumes_with_cached_features_and_the_same_numbers(
    tmp_path, twins, monkeypatch, capsys
):
    whole = rec_run.run_recognition_seed(_spec(tmp_path / "a", twins, "pets"))
    spec = _spec(tmp_path / "b", twins, "pets")

    class StopAfter3(rec_run.StopFlag):
        @property
        def requested(self):
            return (Path(spec.seed_dir) / "train_metrics.jsonl").read_text().count("\n") >= 3

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(rec_run, "StopFlag", StopAfter3)
    with pytest.raises(Interrupted, match="after fit 3 of 45"):
        rec_run.run_recognition_seed(spec)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = rec_run.run_recognition_seed(spec)
    log = capsys.readouterr().out
    assert "resuming the sweep after fit 3 of 45" in log and log.count("(cached,") == 2
    for key in ("test", "best_C", "val_scores"):
        assert resumed[key] == whole[key], key
    lines = (Path(spec.seed_dir) / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == list(range(1, 46))
    assert resumed["sessions"] == 2 and whole["metric"] == "mean_per_class"


@pytest.mark.parametrize("task", ["cifar10", "caltech101", "flowers"])
def test_the_torch_solver_agrees_on_the_synthetic_datasets(tmp_path, twins, task):
    """The twins have 30-40 training images of 512-d features: separable, so at large C
    neither solver converges in 100 iterations and a plateau's first C can move (and the
    features of a random network move by float noise with the thread count). The test
    metric still agrees within two test images (16 images, 4 classes: 12.5 points; a
    difference of two images on Caltech101's twin was seen once on a loaded machine)."""
    a = rec_run.run_recognition_seed(_spec(tmp_path / "sk", twins, task))
    b = rec_run.run_recognition_seed(_spec(tmp_path / "th", twins, task, ["solver", "torch"]))
    n_test = a["images"]["test"]
    one_image = 100.0 / n_test if a["metric"] == "accuracy" else 100.0 / (4 * (n_test // 4))
    assert abs(b["test"] - a["test"]) <= 2 * one_image + 1e-9, (a["test"], b["test"])


def test_the_torch_solver_agrees_on_multi_label_map():
    """VOC-style: one binary fit per class, 11-point mAP of the decision scores."""
    rng = np.random.default_rng(0)
    W = rng.normal(0, 1, (16, 3))

    def split(n):
        X = rng.normal(0, 1, (n, 16)).astype(np.float32)
        return X, (X @ W + rng.normal(0, 1.5, (n, 3)) > 0.5).astype(np.int64)

    tr, va, te = split(150), split(80), split(100)
    out = {}
    for name in ("sklearn", "torch"):
        solver = make_solver(name, 100, 1e-4, True)
        state = sweep(solver, wd_grid(12), tr, va, "map11")
        out[name] = (state.best_C, fit_and_score(solver, state.best_C, tr, te, "map11"))
    assert out["torch"][0] == out["sklearn"][0]
    assert out["torch"][1] == pytest.approx(out["sklearn"][1], abs=0.5)


def test_protocol_values_and_overrides():
    p = resolve("manyshot_linear", smoke=False)
    assert (p.image_size, p.batch_size, p.wd_lo, p.wd_hi, p.wd_n, p.max_iter, p.tol) == (
        224, 64, -6.0, 5.0, 45, 100, 1e-4)  # fmt: skip
    assert p.solver == "sklearn" and p.normalise and p.legacy_sklearn
    assert resolve("manyshot_linear", True, ["solver", "torch"]).solver == "torch"
    with pytest.raises(ConfigError, match="solver must be one of sklearn, torch"):
        resolve("manyshot_linear", True, ["solver", "cuml"])
    with pytest.raises(ConfigError, match="has no setting 'epochs'"):
        resolve("manyshot_linear", True, ["epochs", "3"])


@pytest.mark.slow
def test_runner_runs_each_dataset_then_skips(tmp_path, capsys):
    from transfer import run_recognition

    names = ["cifar10", "sun397", "voc2007"]  # one of each metric (all 11: docs, the demo)
    argv = ["--weights", "none", "--arch", "resnet18", "--datasets", *names, "--dataset",
            "synthetic", "--output", str(tmp_path)]  # fmt: skip
    assert run_recognition.cli(argv) == 0
    out = tmp_path / "manyshot_linear_smoke" / "random_init_r18"
    done = {d.name: json.loads((d / "seed0/metrics.json").read_text()) for d in out.iterdir()}
    assert sorted(done) == sorted(names)
    for name, m in done.items():
        assert 0.0 <= m["test"] <= 100.0 and m["best_C"] > 0 and m["family"] == "recognition"
        assert m["metric"] == D.DATASETS[name].metric
    capsys.readouterr()
    assert run_recognition.cli(argv) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 3
    assert run_recognition.cli([*argv, "--datasets", "imagenet"]) == 2  # named in one line
