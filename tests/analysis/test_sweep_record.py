"""sweep.md says how its numbers were made: the sweep's --set values and which model of each run they are of."""

from tests.analysis.conftest import SWEEP_SETS


def test_sweep_md_records_the_set_overrides_and_the_last_epoch_model(sweep_dir):
    # Item 25: today sweep.md names the grid and the seeds, not the --set values every run had, and not whether
    # its numbers are last-epoch or best-on-validation.
    text = (sweep_dir / "sweep.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("- --set")]
    assert len(lines) == 1, text
    for value in SWEEP_SETS:
        assert f"`{value}`" in lines[0]
    assert "last-epoch model" in text and "test_best_val" in text
