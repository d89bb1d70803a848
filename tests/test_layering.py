"""The packages depend one way: agents -> reward_models -> textenv, never back.

`textenv` (the env, models, rewards, I/O) imports neither `reward_models` nor `agents`;
`reward_models` does not import `agents`. Every import statement counts, including the ones
inside functions, so a lazy import cannot hide an upward dependency.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"textenv": {"reward_models", "agents"}, "reward_models": {"agents"}, "agents": set()}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value).split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in files for line, name in imported_packages(path)
           if name in FORBIDDEN[package]]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_walker_sees_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from agents.ppo import train\n    import reward_models.data\n")
    assert imported_packages(src) == [(2, "agents"), (3, "reward_models")]
