"""ltcl analyze conflicts never draws over a run's own files unless told to (--out)."""

from ltcl.analysis.run_plots import make_run_plots
from ltcl.cli import main
from tests.analysis.test_plots import _write_run, assert_valid_png

ROWS = [(epoch, c, n, k + epoch, 20) for epoch in (1, 2) for c, (n, k) in enumerate([(150, 2), (50, 6), (10, 9)])]


def test_the_default_figure_never_overwrites_a_runs_own_plot(tmp_path, monkeypatch, capsys):
    # Item 24: today the default is RUN/conflicts.png, the run's own figure (last epoch), replaced here by the
    # pooled one.
    scl = _write_run(tmp_path / "scl", ROWS).path
    acl = _write_run(tmp_path / "acl", ROWS, objective="bs+acl").path
    own = make_run_plots(scl)
    assert [p.name for p in own] == ["conflicts.png"]
    before = {p.name: p.read_bytes() for p in scl.iterdir()}
    monkeypatch.chdir(tmp_path)

    for extra in (["--all-epochs"], [str(acl)], [str(acl), "--all-epochs"]):
        assert main(["analyze", "conflicts", str(scl), *extra]) == 0
        wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
        assert len(wrote) == 1
        out = tmp_path / wrote[0].removeprefix("wrote ")
        assert_valid_png(out)
        assert out.name not in before  # a new file, next to the run's own ones
        assert {p.name: p.read_bytes() for p in scl.iterdir() if p.name in before} == before
    names = sorted(p.name for p in scl.iterdir() if p.name not in before)
    assert names == [
        "analysis_conflicts_all_epochs.png",
        "analysis_conflicts_with_acl.png",
        "analysis_conflicts_with_acl_all_epochs.png",
    ]
