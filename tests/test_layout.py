"""The test tree mirrors the source tree module by module (the rule is in tests/README.md).

Every production module under ``services/`` and ``shared/`` has its mirrored test file, holding at
least one test, unless it is listed in EXEMPT: modules with no logic of their own (checked: they
define no function). A new module without its test file fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("services", "shared")

# Modules with no logic of their own: package markers, re-exports, constants, typed schemas and an
# entry point that only dispatches. test_exempt_modules_have_no_logic keeps it that way.
EXEMPT = {
    # package markers: a docstring, at most a version string
    "services/__init__.py",
    "services/evaluator/__init__.py",
    "services/evaluator/api/__init__.py",
    "services/evaluator/hf_evaluate/loraplex_rouge/__init__.py",
    "services/evaluator/hf_evaluate/loraplex_sacrebleu/__init__.py",
    "services/evaluator/tasks/__init__.py",
    "services/server/__init__.py",
    "services/server/api/__init__.py",
    "services/trainer/__init__.py",
    "services/trainer/api/__init__.py",
    "services/trainer/recipes/__init__.py",
    "shared/__init__.py",
    "shared/registry/migrations/__init__.py",
    "shared/registry/migrations/versions/__init__.py",
    # re-exports: the package's public names, each tested in its own module's mirror
    "shared/datasets/__init__.py",
    # `python -m services.evaluator`: picks the API or the worker, both tested where they live
    "services/evaluator/__main__.py",
    # FastAPI dependency aliases (Annotated types), no function
    "services/evaluator/api/deps.py",
    # typed request and response schemas, no validator
    "services/evaluator/schemas.py",
    "services/server/schemas.py",
    # status constants
    "services/evaluator/statuses.py",
}


def mirror_of(module: str) -> str:
    """The test file of a production module (paths relative to the repository root)."""
    path = PurePosixPath(module)
    test = f"test_{path.name}"
    top, *rest = path.parent.parts
    if top == "shared":  # shared/<pkg>/<mod>.py -> tests/shared/<pkg>/test_<mod>.py
        return str(PurePosixPath("tests", "shared", *rest, test))
    if not rest:  # services/<mod>.py, in no service -> tests/services/test_<mod>.py
        return str(PurePosixPath("tests", "services", test))
    # services/<svc>/<pkg>/<mod>.py -> tests/<svc>/<pkg>/test_<mod>.py
    return str(PurePosixPath("tests", *rest, test))


def production_modules() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT).as_posix()) for top in SOURCES for p in (ROOT / top).rglob("*.py")
    )


def has_a_test(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
        for node in ast.walk(tree)
    )


def unmirrored(modules: list[str]) -> list[str]:
    """The modules whose mirrored test file is missing or holds no test."""
    out = []
    for module in modules:
        test = ROOT / mirror_of(module)
        if not (test.is_file() and has_a_test(test)):
            out.append(module)
    return out


def test_the_mirror_rule() -> None:
    assert mirror_of("shared/errors.py") == "tests/shared/test_errors.py"
    assert mirror_of("shared/registry/db.py") == "tests/shared/registry/test_db.py"
    assert mirror_of("services/cli.py") == "tests/services/test_cli.py"
    assert mirror_of("services/server/names.py") == "tests/server/test_names.py"
    assert mirror_of("services/server/api/app.py") == "tests/server/api/test_app.py"


def test_every_module_has_its_mirrored_test_file() -> None:
    missing = [m for m in unmirrored(production_modules()) if m not in EXEMPT]
    assert missing == [], "add these test files (rule in tests/README.md):\n" + "\n".join(
        f"  {m} -> {mirror_of(m)}" for m in missing
    )


def test_exempt_lists_only_existing_modules() -> None:
    gone = sorted(EXEMPT - set(production_modules()))
    assert gone == [], f"no such modules any more; take them off EXEMPT: {gone}"


def test_exempt_modules_have_no_logic() -> None:
    logic = []
    for module in sorted(EXEMPT):
        tree = ast.parse((ROOT / module).read_text())
        defs = {
            n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if defs - ({"main"} if module.endswith("/__main__.py") else set()):
            logic.append(f"{module}: {sorted(defs)}")
    assert logic == [], "these have logic of their own; give them a test:\n" + "\n".join(logic)
