"""The house rules of ltcl.analysis: RunDir owns the run files, the engine owns the accuracy columns, and reading
a sweep's configs needs no plotting library."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.analysis.conftest import REPO_ROOT

SOURCES = sorted((REPO_ROOT / "src" / "ltcl" / "analysis").glob("*.py")) + [
    REPO_ROOT / "src" / "ltcl" / "cli" / "analyses.py",
    REPO_ROOT / "src" / "ltcl" / "cli" / "compare.py",
]


@pytest.mark.parametrize(
    "text",
    [
        '"results.json"',
        '"metrics.csv"',
        '"conflicts.csv"',
        '"config.yaml"',
        '"class_counts.json"',
        '"checkpoint_last.pt"',
        '("many", "medium", "few"',
    ],
)
def test_no_analysis_module_spells_out_what_another_module_owns(text):
    offenders = [str(Path(p).relative_to(REPO_ROOT)) for p in SOURCES if text in Path(p).read_text()]
    assert offenders == [], f"{text} is written out in {offenders}: use RunDir, ACCURACY_COLUMNS or SHOT_GROUPS"


def test_planning_a_sweep_and_reading_its_tables_do_not_import_matplotlib():
    code = "import sys; import ltcl.analysis, ltcl.analysis.sweep, ltcl.analysis.tables; "
    code += "sys.exit(int('matplotlib' in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr or "ltcl.analysis.sweep imported matplotlib"
