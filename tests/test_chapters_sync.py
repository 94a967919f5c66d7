"""Every chapter is a jupytext pair: NN_topic.py (py:percent, the readable diff) + NN_topic.ipynb
(committed without outputs). The two must hold the same cells. Regenerate the notebook with
``jupytext --to ipynb chapters/NN_topic.py`` after editing the .py file."""
import json
import pathlib

import pytest

jupytext = pytest.importorskip("jupytext")

CHAPTERS = pathlib.Path(__file__).resolve().parent.parent / "chapters"
PY_FILES = sorted(CHAPTERS.glob("[0-9][0-9]_*.py"))


def test_chapters_exist():
    assert PY_FILES, "no chapters found"


@pytest.mark.parametrize("py", PY_FILES, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(py):
    nb_path = py.with_suffix(".ipynb")
    assert nb_path.exists(), f"{nb_path.name} is missing: run jupytext --to ipynb {py}"
    raw = json.loads(nb_path.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{nb_path.name} was committed with outputs"
    a = jupytext.read(py)
    b = jupytext.read(nb_path)
    cells_a = [(c.cell_type, c.source.strip()) for c in a.cells]
    cells_b = [(c.cell_type, c.source.strip()) for c in b.cells]
    assert cells_a == cells_b, f"{py.name} and {nb_path.name} differ: regenerate the notebook"
