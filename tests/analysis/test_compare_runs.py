"""ltcl compare on the runs a user really has: no test split, extended runs, repeated seeds, an unfinished run.

Every run directory is written by hand (config.yaml, results.json, resumes.jsonl), nothing is trained.
"""

from ltcl.cli import main
from ltcl.config import Config, save_config
from ltcl.engine.rundir import RunDir

TEST = {"many": 80.0, "medium": 60.0, "few": 40.0, "all": 70.0}


def write_run(run_dir, *, seed=0, epochs=10, test=TEST, extended_to=None, finished=True, objective="bs+acl"):
    """A run directory as ltcl train leaves it: config.yaml with the config's epochs, results.json when finished
    (``test`` None: the run had no test split), and a resume record when the run was extended."""
    cfg = Config()
    cfg.loss.objective, cfg.optim.epochs = objective, epochs
    cfg.train.seed, cfg.train.run_name, cfg.train.output_dir = seed, run_dir.name, str(run_dir.parent)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / RunDir.CONFIG, extra={"seed": seed})
    run = RunDir(run_dir)
    if extended_to is not None:
        run.append_resume({"epoch": epochs, "changed": {}, "extended_epochs": [epochs, extended_to]})
    if finished:
        results = {"test": test, "test_best_val": None, "best_epoch": None, "per_class_test": None, "seed": seed}
        run.write_results(results)
    return run_dir


def compare(*dirs, capsys):
    status = main(["compare", *map(str, dirs)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_run_without_a_test_split_is_a_row_of_n_a(tmp_path, capsys):
    # Item 4: today an AttributeError traceback ('NoneType' object has no attribute 'get').
    no_test = write_run(tmp_path / "no_test", test=None)
    status, out, err = compare(no_test, capsys=capsys)
    assert status == 0, err
    assert "| no_test | 0 | n/a | n/a | n/a | n/a | n/a | n/a |" in out
    assert "no test split" in out

    with_test = write_run(tmp_path / "with_test", seed=1, objective="bs")
    status, out, err = compare(no_test, with_test, capsys=capsys)
    assert status == 0, err
    assert "| loss.objective=bs+acl | 0 | n/a | n/a | n/a | n/a | n/a | n/a |" in out
    assert "| loss.objective=bs | 1 | 80.00 | 60.00 | 40.00 | 70.00 | n/a | n/a |" in out


def test_an_extended_run_is_grouped_by_the_epochs_it_trained(tmp_path, capsys):
    # Item 7a: today the 10-epoch run extended to 20 is averaged with the 10-epoch run of the other seed.
    short = write_run(tmp_path / "e10_s0", seed=0, epochs=10, test=TEST)
    longer = write_run(tmp_path / "e20_s1", seed=1, epochs=10, extended_to=20, test={**TEST, "all": 90.0})
    status, out, err = compare(short, longer, capsys=capsys)
    assert status == 0, err
    assert "| optim.epochs=10 | 0 | 80.00 | 60.00 | 40.00 | 70.00 | n/a | n/a |" in out
    assert "| optim.epochs=20 | 1 | 80.00 | 60.00 | 40.00 | 90.00 | n/a | n/a |" in out

    native = write_run(tmp_path / "e20_s0", seed=0, epochs=20, test={**TEST, "all": 80.0})
    status, out, err = compare(native, longer, capsys=capsys)  # 20 epochs either way: one setting
    assert status == 0, err
    assert "| e20_s0 | 0, 1 | 80.00 ± 0.00 | 60.00 ± 0.00 | 40.00 ± 0.00 | 85.00 ± 7.07 | n/a | n/a |" in out


def test_the_seeds_column_counts_distinct_seeds(tmp_path, capsys):
    # Item 7b: two runs of seed 0 and one of seed 1 are two seeds, not three; seed 0's value is its runs' mean (71),
    # so All is the mean ± std of 71 and 74 (issue 25: over distinct seeds), not of the three runs (72.00 ± 2.00).
    dirs = [
        write_run(tmp_path / "a", seed=0, test={**TEST, "all": 70.0}),
        write_run(tmp_path / "b", seed=0, test={**TEST, "all": 72.0}),
        write_run(tmp_path / "c", seed=1, test={**TEST, "all": 74.0}),
    ]
    status, out, err = compare(*dirs, capsys=capsys)
    assert status == 0, err
    assert "| a | 0, 1 (3 runs) | 80.00 ± 0.00 | 60.00 ± 0.00 | 40.00 ± 0.00 | 72.50 ± 2.12 | n/a | n/a |" in out

    out_md = tmp_path / "table.md"
    assert main(["compare", *map(str, dirs), "--out", str(out_md)]) == 0
    capsys.readouterr()
    header, row = out_md.with_suffix(".csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["seeds"] == "2" and values["runs"] == "3"


def test_an_unfinished_run_among_many_is_listed_not_fatal(tmp_path, capsys):
    # Item 7c: today `ltcl compare runs/*` stops at the first run without results.json (exit 2, no table).
    done = [write_run(tmp_path / f"s{seed}", seed=seed, test={**TEST, "all": 70.0 + seed}) for seed in (0, 1)]
    running = write_run(tmp_path / "s2", seed=2, finished=False)
    status, out, err = compare(*done, running, capsys=capsys)
    assert status == 0, err
    assert "| s0 | 0, 1 | 80.00 ± 0.00 | 60.00 ± 0.00 | 40.00 ± 0.00 | 70.50 ± 0.71 | n/a | n/a |" in out
    assert f"unfinished (no {RunDir.RESULTS} yet, left out): {running}" in out

    out_md = tmp_path / "table.md"
    assert main(["compare", *map(str, done), str(running), "--out", str(out_md)]) == 0
    capsys.readouterr()
    assert str(running) in out_md.read_text()

    status, out, err = compare(running, capsys=capsys)  # nothing finished: nothing to tabulate
    assert status == 2 and f"{running}" in err and "finished" in err
