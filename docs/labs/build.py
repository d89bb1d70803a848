"""Build the lab notebooks from their sources, and run the solutions headless.

    python docs/labs/build.py                  # write the student and solution notebooks
    python docs/labs/build.py --check          # fail if a committed notebook is out of date
    python docs/labs/build.py --execute        # run every solution notebook (what `make labs` does)
    python docs/labs/build.py --execute lab3_ppo --images-dir docs/labs/images   # one lab;
                                               # also refresh its expected plots

Each lab has ONE source, docs/labs/labN_name.py, in jupytext's percent format, holding the
solutions. Two notebooks are generated from it (never edit them by hand):

    docs/labs/labN_name.ipynb             the student version: every block between the lines
                                          `# BEGIN SOLUTION` and `# END SOLUTION` becomes
                                          `# TODO: your code here` + `raise NotImplementedError`,
                                          and cells tagged "solution" are dropped
    docs/labs/solutions/labN_name.ipynb   the solution version (the markers removed)

Neither holds outputs. Cell tags the tests rely on (tests/test_labs.py):

    setup      cheap imports and helpers; the tests run these first
    exercise   a function the student writes (only functions: the cell must run when stubbed)
    check      calls the exercise and raises AssertionError with a hint when it is wrong
    solution   a cell only the solution notebook keeps (answers to discussion questions)

`--execute` runs each solution notebook with nbclient in a fresh temporary directory (so a
run writes nothing into the repository), stops at the first error, prints each lab's wall
time, and with --images-dir copies the PNGs the run saved there (the expected plots the
student notebooks show).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

LABS_DIR = Path(__file__).resolve().parent
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


def lab_sources(names: list[str] | None = None) -> list[Path]:
    """docs/labs/lab*.py, in order (optionally only those whose stem is in `names`)."""
    paths = sorted(LABS_DIR.glob("lab[0-9]*.py"))
    if names:
        unknown = set(names) - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"unknown lab(s) {sorted(unknown)}; valid: {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in names]
    return paths


def strip_solutions(source: str, where: str) -> str:
    """A code cell's source with each solution block replaced by a TODO stub."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, cell line {number}: nested {BEGIN!r}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [f"{indent}# TODO: your code here", f"{indent}raise NotImplementedError"]
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, cell line {number}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def remove_markers(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if line.strip() not in (BEGIN, END))


def _clean(cell) -> None:
    """Drop what jupytext or a kernel may have left: outputs, counts, ids kept stable."""
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None


def build(source: Path, student: bool):
    """The notebook (nbformat) of one lab source, student or solution version."""
    import jupytext
    import nbformat

    nb = jupytext.read(source)
    cells = []
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if student and "solution" in tags:
            continue
        if cell.cell_type == "code":
            where = f"{source.name}, cell {index}"
            cell.source = (strip_solutions(cell.source, where) if student
                           else remove_markers(cell.source))
        elif not student:  # the solution notebook lives one folder down
            cell.source = cell.source.replace("](images/", "](../images/")
        _clean(cell)
        cell.id = f"cell-{len(cells)}"  # stable ids: rebuilding changes nothing
        cells.append(cell)
    nb.cells = cells
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    nbformat.validate(nb)
    return nb


def targets(source: Path) -> dict[str, Path]:
    return {"student": LABS_DIR / f"{source.stem}.ipynb",
            "solution": LABS_DIR / "solutions" / f"{source.stem}.ipynb"}


def render(nb) -> str:
    import nbformat

    return nbformat.writes(nb) + "\n"


def write_all(sources: list[Path], check: bool) -> int:
    stale = []
    for source in sources:
        for kind, path in targets(source).items():
            text = render(build(source, student=kind == "student"))
            if check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(LABS_DIR.parent.parent)}")
    if stale:
        print("out of date (run `python docs/labs/build.py`):\n  "
              + "\n  ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


def execute(sources: list[Path], timeout: int, images_dir: Path | None) -> int:
    """Run each solution notebook headless in a temporary directory; 1 on the first error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    times = {}
    for source in sources:
        nb = nbformat.read(targets(source)["solution"], as_version=4)
        with tempfile.TemporaryDirectory(prefix=f"{source.stem}_") as tmp:
            print(f"== {source.stem} (in {tmp})", flush=True)
            t0 = time.perf_counter()
            # A last cell of our own reports the kernel's CPU time (user + system, all
            # threads): on a busy machine it says more than the wall time does.
            nb.cells.append(nbformat.v4.new_code_cell(
                "import resource\n_r = resource.getrusage(resource.RUSAGE_SELF)\n"
                "print('CPU', _r.ru_utime + _r.ru_stime)"))
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": tmp}})
            try:
                client.execute()
            except CellExecutionError as error:
                print(f"{source.stem} FAILED after {time.perf_counter() - t0:.0f} s:\n{error}",
                      file=sys.stderr)
                return 1
            wall = time.perf_counter() - t0
            cpu = float(nb.cells[-1].outputs[0]["text"].split()[1])
            times[source.stem] = {"wall_s": round(wall), "cpu_s": round(cpu)}
            print(f"   {source.stem}: {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
            if images_dir is not None:
                images_dir.mkdir(parents=True, exist_ok=True)
                for png in sorted(Path(tmp).glob("*.png")):
                    shutil.copy(png, images_dir / png.name)
                    print(f"   saved {images_dir / png.name}")
    print(json.dumps(times), f"total {sum(t['wall_s'] for t in times.values())} s wall")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="lab stems (default: all), e.g. lab3_ppo")
    parser.add_argument("--check", action="store_true",
                        help="only check that the committed notebooks are up to date")
    parser.add_argument("--execute", action="store_true",
                        help="run the committed solution notebooks headless")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--images-dir", type=Path, default=None,
                        help="copy the PNGs each run saves here (e.g. docs/labs/images)")
    args = parser.parse_args(argv)
    sources = lab_sources(args.labs)
    if args.check:
        return write_all(sources, check=True)
    if args.execute:
        os.environ.setdefault("MPLBACKEND", "Agg")  # the kernels inherit these
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile sets it
        return execute(sources, args.timeout, args.images_dir)
    return write_all(sources, check=False)


if __name__ == "__main__":
    sys.exit(main())
