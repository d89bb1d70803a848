"""The teaching labs (docs/labs/): the notebooks parse, are built from their sources, and
every check cell fails while its TODO is open and passes with the solution.

Only the cheap cells run here (tags "setup", "exercise", "check"); `make labs` executes the
whole solution notebooks (docs/labs/build.py --execute).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

LABS = Path(__file__).resolve().parents[1] / "docs" / "labs"
SOURCES = sorted(LABS.glob("lab[0-9]*.py"))
STEMS = [p.stem for p in SOURCES]


def code_cells(notebook: Path) -> list[tuple[list[str], str]]:
    """(tags, source) of every code cell, parsed as plain JSON (no jupyter needed)."""
    nb = json.loads(notebook.read_text())
    assert nb["nbformat"] == 4, f"{notebook}: not an nbformat-4 notebook"
    return [(c["metadata"].get("tags", []), "".join(c["source"]))
            for c in nb["cells"] if c["cell_type"] == "code"]


def run_checks(notebook: Path) -> list[tuple[str, BaseException | None]]:
    """Run the setup, exercise and check cells in order, in one namespace. -> one
    (first line of the check, the AssertionError it raised or None) per check cell."""
    namespace: dict = {"__name__": "__lab__"}
    results = []
    threads = torch.get_num_threads()  # a lab's setup may change it
    try:
        for index, (tags, source) in enumerate(code_cells(notebook)):
            code = compile(source, f"{notebook.name}:cell{index}", "exec")
            if "setup" in tags or "exercise" in tags:
                exec(code, namespace)
            elif "check" in tags:
                try:
                    exec(code, namespace)
                    results.append((source.splitlines()[0], None))
                except AssertionError as error:
                    results.append((source.splitlines()[0], error))
    finally:
        torch.set_num_threads(threads)
    return results


def test_there_are_six_labs():
    assert len(SOURCES) == 6, STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_student_notebook_parses_and_has_no_solutions(stem):
    path = LABS / f"{stem}.ipynb"
    nb = json.loads(path.read_text())
    cells = code_cells(path)
    text = "\n".join(source for _, source in cells)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert not any("solution" in tags for tags, _ in cells)
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), \
        "commit the student notebook without outputs"
    for _, source in cells:
        compile(source, path.name, "exec")  # every cell is valid Python
    exercises = [s for tags, s in cells if "exercise" in tags]
    assert exercises and all("raise NotImplementedError" in s for s in exercises)


@pytest.mark.parametrize("stem", STEMS)
def test_checks_fail_while_todos_are_open(stem):
    results = run_checks(LABS / f"{stem}.ipynb")
    assert results, f"{stem} has no check cell"
    for first_line, error in results:
        assert error is not None, f"{stem}: the check {first_line!r} passes with the TODO stub"
        assert "not implemented yet" in str(error), (first_line, str(error))


@pytest.mark.parametrize("stem", STEMS)
def test_checks_pass_with_the_solutions(stem):
    for first_line, error in run_checks(LABS / "solutions" / f"{stem}.ipynb"):
        assert error is None, f"{stem}: {first_line!r} fails with the solution: {error}"


def test_strip_solutions_replaces_each_block_with_a_stub():
    spec = importlib.util.spec_from_file_location("labs_build", LABS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    source = "def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n"
    assert build.strip_solutions(source, "t") == (
        "def f(x):\n    # TODO: your code here\n    raise NotImplementedError")
    assert build.remove_markers(source) == "def f(x):\n    return x"
    with pytest.raises(ValueError, match="never closed"):
        build.strip_solutions("# BEGIN SOLUTION\nx = 1", "t")


def test_notebooks_are_built_from_their_sources():
    pytest.importorskip("jupytext")
    spec = importlib.util.spec_from_file_location("labs_build", LABS / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.write_all(SOURCES, check=True) == 0, \
        "a notebook is out of date: run `python docs/labs/build.py`"


def test_reward_model_features_are_what_the_head_reads():
    import textenv

    rm = textenv.load_reward_model()
    prompts = ["write a positive review of the pizza about the crust , short :"] * 3
    responses = ["the crust was crispy . <eos>", "the the", "the crust was soggy . <eos>"]
    features = rm.features(prompts, responses, batch_size=2)  # two chunks
    assert features.shape == (3, rm.config.n_embd)
    with torch.no_grad():
        raw = rm.head(features).squeeze(-1)
    assert torch.allclose(raw, rm.raw_score(prompts, responses), atol=1e-5)
