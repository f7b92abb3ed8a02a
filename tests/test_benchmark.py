"""adps benchmark: the table and JSON it writes, and when it reuses a finished entry.

An entry is reused only when the adps version and every setting that changes its numbers are
those it was made with (recorded as a hash in its metrics.json); otherwise it is trained again
with the old files moved aside, or, with --reuse, refused with the differing settings named.
Which entries were trained is observed with a spy on the training function, never by time.
"""

import json
import shutil
from pathlib import Path

import pytest

from adps.cli import main
from adps.data.procedural import make_demo_dataset
from adps.engine.checkpoint import Checkpoint
from adps.metrics import METRIC_KEYS

SIZE = 64
X_LR, Y_LR = "0.0001", "0.0002"  # the one setting changed between runs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two categories under one root: 'surface' (entry A) and 'other' (entry B, a copy)."""
    root = tmp_path_factory.mktemp("data")
    category = make_demo_dataset(root, size=SIZE, n_train=8, n_test_good=3, n_test_defect=3)
    shutil.copytree(category, root / "other")
    return category


def bench(data, out, *extra, categories=("surface", "other"), lr=X_LR) -> list[str]:
    return [
        "benchmark",
        "--data",
        str(data.parent),
        "--categories",
        *categories,
        "--image-size",
        str(SIZE),
        "-k",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "1",
        "--checkpoint-every",
        "1",
        "--lr",
        lr,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A benchmark of both entries with setting X, made once; tests work on copies of it."""
    out = tmp_path_factory.mktemp("finished") / "bench"
    assert main(bench(data, out)) == 0
    return out


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(finished, out)  # copy2: contents and modification times kept
    return out


@pytest.fixture
def trained(monkeypatch):
    """(entry folder name, resume) for each call of the training function."""
    import adps.engine.train as engine_train

    calls, real = [], engine_train.train

    def spy(model_config, train_config, dataset, out_dir, resume=False, **kwargs):
        calls.append((Path(out_dir).name, resume))
        return real(model_config, train_config, dataset, out_dir, resume=resume, **kwargs)

    monkeypatch.setattr(engine_train, "train", spy)
    return calls


def snapshot(folder: Path) -> dict:
    """Bytes and modification time of an entry's result files: equal = not touched."""
    return {
        name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
        for name in ("model.pt", "metrics.json")
    }


def entry_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())["entry"]


@pytest.mark.integration
@pytest.mark.slow
def test_benchmark_command_table_and_json(data, tmp_path, capsys, trained):
    second = make_demo_dataset(
        tmp_path / "second", size=SIZE, n_train=6, n_test_good=2, n_test_defect=2, seed=5
    )
    out = tmp_path / "bench"
    argv = [
        "benchmark",
        "--data",
        str(data.parent),
        "--categories",
        data.name,
        "--datasets",
        str(second),
        "--image-size",
        str(SIZE),
        "-k",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    payload = json.loads((out / "benchmark.json").read_text())
    rows = payload["rows"]
    assert [r["name"] for r in rows] == [data.name, f"second-{second.name}"]  # same folder names
    assert all(r["train_seconds"] > 0 and r["test_seconds"] > 0 for r in rows)
    for key in METRIC_KEYS:  # the mean row is the unweighted mean of the entries
        assert payload["mean"][key] == pytest.approx(sum(r["metrics"][key] for r in rows) / 2)
    table = (out / "benchmark.md").read_text().splitlines()
    assert len(table) == 2 + 2 + 1 and table[-1].startswith("| **mean**")
    # each row says what produced it: its own data, this run's configs and version
    import adps.version

    for row in rows:
        identity = row["entry"]["identity"]
        assert identity["adps_version"] == adps.version.__version__
        assert identity["train"] == payload["train_config"]
        assert identity["model"] == payload["model_config"]
    assert rows[1]["entry"]["identity"]["data"]["path"] == str(second.resolve())
    assert rows[0]["entry"]["hash"] != rows[1]["entry"]["hash"]
    # a second run with the same settings reuses finished entries instead of training again
    capsys.readouterr()
    trained.clear()
    assert main(argv) == 0
    assert trained == []
    assert capsys.readouterr().out.count("reusing") == 2


@pytest.mark.integration
@pytest.mark.slow
def test_benchmark_with_a_time_budget_trains_each_entry_for_the_budget(data, tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "benchmark",
                "--data",
                str(data.parent),
                "--categories",
                data.name,
                "--image-size",
                str(SIZE),
                "-k",
                "4",
                "--batch-size",
                "4",
                "--steps-per-epoch",
                "2",
                "--time-budget",
                "2s",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    ckpt = Checkpoint.load(out / data.name / "model.pt")
    assert ckpt.train_config.time_budget == 2.0
    # ran until the budget was spent: training steps plus what came out of the budget before
    # them (decoding, the memory's fit) and what was set aside for after them (the decision's
    # fit, calibration); last.pt keeps that account for a resume
    last = Checkpoint.load(out / data.name / "last.pt")
    assert last.resume is not None and ckpt.training.steps >= 1
    assert last.training.steps == ckpt.training.steps
    assert last.training.seconds + last.resume["overhead"] + last.resume["reserve"] >= 2.0


@pytest.mark.integration
def test_a_changed_setting_retrains_that_entry_and_only_that_one(
    data, copy_of_finished, trained, capsys
):
    out = copy_of_finished
    a, b = out / "surface", out / "other"
    a_x, b_x = snapshot(a), snapshot(b)
    a_hash_x, b_hash_x = entry_of(a)["hash"], entry_of(b)["hash"]

    # setting Y on A only: A is trained again from scratch, its X result kept aside
    assert main(bench(data, out, categories=("surface",), lr=Y_LR)) == 0
    assert trained == [("surface", False)]
    printed = capsys.readouterr().out
    assert f"train.lr: {X_LR} -> {Y_LR}" in printed and "moved its files to" in printed
    stale = a / f"stale-{a_hash_x[:8]}"
    assert {name: (stale / name).read_bytes() for name in a_x} == {
        name: content for name, (content, _) in a_x.items()
    }
    assert entry_of(a)["identity"]["train"]["lr"] == float(Y_LR)
    assert entry_of(a)["hash"] != a_hash_x
    assert snapshot(b) == b_x  # B was not part of this run
    a_y = snapshot(a)

    # setting Y on A and B: only B is trained; A is reused as it is
    trained.clear()
    assert main(bench(data, out, lr=Y_LR)) == 0
    assert trained == [("other", False)]
    assert snapshot(a) == a_y
    assert (b / f"stale-{b_hash_x[:8]}" / "model.pt").read_bytes() == b_x["model.pt"][0]
    payload = json.loads((out / "benchmark.json").read_text())
    assert payload["train_config"]["lr"] == float(Y_LR)
    for row, folder in zip(payload["rows"], (a, b), strict=True):
        assert row["entry"] == entry_of(folder)
        assert row["entry"]["identity"]["train"]["lr"] == float(Y_LR)


@pytest.mark.integration
def test_settings_that_do_not_change_the_numbers_reuse_both_entries(
    data, copy_of_finished, trained, tmp_path
):
    before = {name: snapshot(copy_of_finished / name) for name in ("surface", "other")}
    assert main(bench(data, copy_of_finished, "--cache-dir", str(tmp_path / "cache"))) == 0
    assert trained == []
    assert {name: snapshot(copy_of_finished / name) for name in before} == before


@pytest.mark.integration
def test_reuse_refuses_a_changed_setting_naming_the_entry_and_the_field(
    data, copy_of_finished, trained, capsys
):
    before = {name: snapshot(copy_of_finished / name) for name in ("surface", "other")}
    assert main(bench(data, copy_of_finished, "--reuse", lr=Y_LR)) == 2
    error = capsys.readouterr().err
    assert "entry 'surface'" in error and "entry 'other'" in error
    assert f"train.lr: {X_LR} -> {Y_LR}" in error
    assert trained == []  # refused before training anything
    assert {name: snapshot(copy_of_finished / name) for name in before} == before
    # with the settings it was made with, --reuse reuses
    assert main(bench(data, copy_of_finished, "--reuse")) == 0
    assert trained == []


@pytest.mark.integration
def test_a_new_adps_version_retrains(data, copy_of_finished, trained, capsys, monkeypatch):
    import adps.version

    old_version = adps.version.__version__
    monkeypatch.setattr(adps.version, "__version__", "9.9.9")
    a = copy_of_finished / "surface"
    old_hash = entry_of(a)["hash"]
    assert main(bench(data, copy_of_finished, "--reuse", categories=("surface",))) == 2
    assert f"adps_version: {old_version} -> 9.9.9" in capsys.readouterr().err
    assert trained == []
    assert main(bench(data, copy_of_finished, categories=("surface",))) == 0
    assert trained == [("surface", False)]
    assert f"adps_version: {old_version} -> 9.9.9" in capsys.readouterr().out
    assert entry_of(a)["identity"]["adps_version"] == "9.9.9"
    assert (a / f"stale-{old_hash[:8]}" / "model.pt").is_file()


@pytest.mark.integration
def test_an_entry_from_before_the_check_counts_as_changed(data, copy_of_finished, trained, capsys):
    """Written by the adps that did not record its settings: no 'entry' block, no entry.json."""
    a = copy_of_finished / "surface"
    metrics = json.loads((a / "metrics.json").read_text())
    del metrics["entry"]
    (a / "metrics.json").write_text(json.dumps(metrics))
    (a / "entry.json").unlink()
    old_model = (a / "model.pt").read_bytes()
    assert main(bench(data, copy_of_finished, "--reuse", categories=("surface",))) == 2
    error = capsys.readouterr().err
    assert "entry 'surface'" in error and "without a recorded configuration" in error
    assert trained == []
    assert main(bench(data, copy_of_finished, categories=("surface",))) == 0
    assert trained == [("surface", False)]
    assert (a / "stale-unrecorded" / "model.pt").read_bytes() == old_model
    assert "entry" in json.loads((a / "metrics.json").read_text())


@pytest.mark.integration
def test_an_interrupted_entry_resumes_with_its_settings_and_restarts_with_others(
    data, copy_of_finished, trained
):
    """Interrupted = last.pt and entry.json but no model.pt or metrics.json yet."""
    a = copy_of_finished / "surface"

    def interrupt():
        (a / "model.pt").unlink()
        (a / "metrics.json").unlink()
        assert (a / "last.pt").is_file() and (a / "entry.json").is_file()

    interrupt()
    assert main(bench(data, copy_of_finished, categories=("surface",))) == 0
    assert trained == [("surface", True)]
    assert not any(p.name.startswith("stale-") for p in a.iterdir())
    interrupt()
    hash_x = json.loads((a / "entry.json").read_text())["hash"]
    trained.clear()
    # another model setting: resuming its last.pt would be refused (or, for a training
    # setting, silently mix two configurations), so it starts over with last.pt moved aside
    assert main(bench(data, copy_of_finished, "--sigma", "2", categories=("surface",))) == 0
    assert trained == [("surface", False)]
    assert (a / f"stale-{hash_x[:8]}" / "last.pt").is_file()
    assert entry_of(a)["identity"]["model"]["sigma"] == 2.0
