"""Evaluation recipes: include, validation, and every shipped recipe names real schemes, methods and tasks."""

from pathlib import Path

import pytest

from qsink.errors import QsinkError
from qsink.evaluate.plan import load_eval_recipe
from qsink.evaluate.plan import plan_cells

ROOT = Path(__file__).resolve().parents[2] / "recipes" / "eval"


def test_shipped_eval_recipes_are_valid():
    from qsink.data.tasks import TASKS

    recipes = sorted(ROOT.glob("*.yaml"))
    assert len(recipes) >= 2
    for p in recipes:
        r = load_eval_recipe(p)
        from qsink.evaluate.plan import plan_matrix

        cells, _, _, _ = plan_matrix(r)  # as qsink evaluate plans it: the mixtures a recipe defines are registered
        assert len(cells) > len(r["schemes"])  # fp plus at least one handling per scheme
        assert all(t in TASKS for t in r.get("tasks", []))


def test_include_lists_and_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("models: [m1]\nschemes: w8a8, w4a4\nlimit: 5\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\nhandling: [none, hadamard]\nlimit: null\n")
    r = load_eval_recipe(tmp_path / "b.yaml")
    assert r == {"models": ["m1"], "schemes": ["w8a8", "w4a4"], "handling": ["none", "hadamard"], "limit": None}
    (tmp_path / "c.yaml").write_text("schemes: [w8a8]\n")
    with pytest.raises(QsinkError, match="names no models"):
        load_eval_recipe(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("models: [m]\nschemes: {w8a8: 1}\n")
    with pytest.raises(QsinkError, match="schemes must be a list"):
        load_eval_recipe(tmp_path / "d.yaml")


def test_parse_cells_splits_labels_and_checks_each():
    from qsink.evaluate.plan import parse_cells

    assert parse_cells(["w8a8,w4a4+hadamard", "nf4"]) == (("w8a8", "none"), ("w4a4", "hadamard"), ("nf4", "none"))
    for bad, says in (("fp", "reference"), ("bogus", "bogus"), ("w8a8+nope", "nope"), ("", "no cells")):
        with pytest.raises(QsinkError, match=says):
            parse_cells([bad])
