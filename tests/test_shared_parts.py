"""A part is shared when two objectives use it.

The shared modules that hold objective parts (losses, the momentum teacher, gradient caching, masking, heads) keep
only what at least two objective folders (``hf_ssl/models/<method>/``) use; a part with one user lives in that
objective's folder. Users are found by reading the imports of every file of an objective folder (function-level ones
too, relative ones, and names re-exported by another module) and the attributes it reads from an imported module; a
folder counts once however many of its files use a part. A part that only other parts use (a helper of two losses)
has their users. Other package code (health, evaluation) does not count: what only it and one objective use is not an
objective part.

And no objective folder imports another's: what two objectives use lives in a shared module, not in one of them.
"""

from __future__ import annotations

import ast
import textwrap
from collections import defaultdict
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "hf_ssl"
SHARED_PART_MODULES = ("losses", "teachers", "gradient_cache", "masking", "heads")
"""The shared modules that hold objective parts (those of them that exist are checked)."""


def module_name(path: Path, root: Path) -> str:
    """``root/models/mae/modeling_mae.py`` -> ``<root's name>.models.mae.modeling_mae`` (a package: its folder)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.Module, module: str, is_package: bool) -> dict[str, str]:
    """Every name the file binds by an import, anywhere in it, to the qualified name it stands for."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])])
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; ``None`` for an expression that is not a chain of names."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    return [node.id, *reversed(chain)] if isinstance(node, ast.Name) else None


def references(node: ast.AST, local: dict[str, str]) -> set[str]:
    """The qualified names an AST node reads: each name and attribute chain, its first name resolved by ``local``."""
    found = set()
    for child in ast.walk(node):
        chain = dotted(child) if isinstance(child, ast.Name | ast.Attribute) else None
        if chain and chain[0] in local:
            found.add(".".join([local[chain[0]], *chain[1:]]))
    return found


def top_level_names(tree: ast.Module) -> dict[str, ast.AST]:
    """The functions, classes and assigned names a module defines (its logger is not a part)."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            value = dotted(node.value.func) if isinstance(node.value, ast.Call) else None
            if value and value[-1] == "getLogger":
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update((target.id, node) for target in targets if isinstance(target, ast.Name))
    return names


def part_users(root: Path, shared_modules: list[str]) -> dict[str, set[str]]:
    """The objective folders (``<root>/models/<x>/``) that use each public name of ``shared_modules``.

    Args:
        root: the package's folder.
        shared_modules: the shared modules' names inside the package (``["losses", "teachers"]``).

    Returns:
        ``{"<package>.<module>.<name>": {objective folder names}}`` for every public name of those modules.
    """
    package = root.name
    trees, imports = {}, {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        trees[name] = (path, ast.parse(path.read_text(), str(path)))
        imports[name] = imported_names(trees[name][1], name, path.name == "__init__.py")

    def origin(qualified: str) -> str:
        """Follow re-exports (``pkg.X`` that ``pkg/__init__.py`` imports from ``pkg.losses``) to the defining module."""
        for _ in range(10):
            parts = qualified.split(".")
            module = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in trees), "")
            rest = parts[len(module.split(".")) :] if module else []
            if not rest or rest[0] not in imports[module]:
                return qualified
            qualified = ".".join([imports[module][rest[0]], *rest[1:]])
        return qualified

    shared = {f"{package}.{module}": top_level_names(trees[f"{package}.{module}"][1]) for module in shared_modules}
    parts = {f"{module}.{name}" for module, names in shared.items() for name in names}

    def parts_read(node: ast.AST, local: dict[str, str]) -> set[str]:
        """The parts (each qualified name with its prefixes, so ``losses.Loss.forward`` counts for ``losses.Loss``)."""
        found = set()
        for qualified in references(node, local):
            chain = origin(qualified).split(".")
            found.update(".".join(chain[:i]) for i in range(1, len(chain) + 1) if ".".join(chain[:i]) in parts)
        return found

    users: dict[str, set[str]] = defaultdict(set)
    models = f"{package}.models."
    for name, (_, tree) in trees.items():
        folder = name.removeprefix(models).split(".")[0]
        if name.startswith(models) and (root / "models" / folder / "__init__.py").exists():
            direct = {origin(target) for target in imports[name].values()} & parts
            for part in direct | parts_read(tree, imports[name]):
                users[part].add(folder)

    readers: dict[str, set[str]] = defaultdict(set)  # part -> the parts (public or private) that read it
    for module, names in shared.items():
        local = {**imports[module], **{name: f"{module}.{name}" for name in names}}
        for name, node in names.items():
            for part in parts_read(node, local) - {f"{module}.{name}"}:
                readers[part].add(f"{module}.{name}")
    changed = True
    while changed:  # a part read by other parts has their users
        changed = False
        for part, by in readers.items():
            inherited = set().union(*(users[reader] for reader in by)) - users[part]
            if inherited:
                users[part] |= inherited
                changed = True
    return {
        f"{module}.{name}": set(users[f"{module}.{name}"])
        for module, names in shared.items()
        for name in names
        if not name.startswith("_")
    }


def shared_part_users() -> dict[str, set[str]]:
    modules = [module for module in SHARED_PART_MODULES if (PACKAGE_ROOT / f"{module}.py").exists()]
    assert "teachers" in modules, "the scan must have at least one shared module to read"
    return part_users(PACKAGE_ROOT, modules)


def test_every_shared_part_has_two_objective_users():
    users = shared_part_users()
    lonely = {part: sorted(by) for part, by in users.items() if len(by) < 2}
    assert not lonely, (
        "parts of shared modules with fewer than two objective users (move each into its objective's folder, or, "
        f"if only shared package code and one objective use it, next to that shared code): {lonely}"
    )


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_scan_finds_every_kind_of_use_on_a_small_tree(tmp_path):
    root = tmp_path / "pkg"
    write(
        root,
        {
            "__init__.py": "from pkg.losses import reexported\n",
            "losses.py": """
                import logging

                logger = logging.getLogger(__name__)
                SCALE = 2.0

                def helper(x):
                    return x * SCALE

                def _private(x):
                    return late_helper(x)

                def late_helper(x):
                    return x

                def two_users(x):
                    return helper(x)

                def one_user(x):
                    return x

                def unused(x):
                    return x

                def reexported(x):
                    return x

                class Late:
                    def __call__(self, x):
                        return _private(x)
                """,
            "masking.py": """
                from pkg import losses

                def mask(x):
                    return losses.one_user(x)
                """,
            "health.py": "from pkg.losses import unused\n",  # shared package code: not an objective user
            "models/__init__.py": "",
            "models/a/__init__.py": "from .model import run\n",
            "models/a/model.py": """
                from pkg.losses import one_user, two_users

                def run(x):
                    from ...losses import Late  # a function-level, relative import
                    return Late()(two_users(one_user(x)))
                """,
            "models/b/__init__.py": "",
            "models/b/model.py": """
                import pkg.losses as L
                from pkg import losses, reexported

                def run(x):
                    return reexported(losses.two_users(L.Late()(x)))
                """,
            "models/b/other.py": "from pkg.losses import two_users\n",  # the same folder again: counts once
            "models/c/__init__.py": "from pkg.masking import mask\n",
            "models/not_an_objective/notes.py": "from pkg.losses import unused\n",  # no __init__.py
        },
    )
    users = part_users(root, ["losses", "masking"])
    assert users == {
        "pkg.losses.SCALE": {"a", "b"},  # read by helper, read by two_users
        "pkg.losses.helper": {"a", "b"},
        "pkg.losses.late_helper": {"a", "b"},  # read by _private, read by Late
        "pkg.losses.two_users": {"a", "b"},
        "pkg.losses.one_user": {"a", "c"},  # c through masking.mask, in another shared module
        "pkg.losses.unused": set(),
        "pkg.losses.reexported": {"b"},  # imported from the package, which re-exports it
        "pkg.losses.Late": {"a", "b"},
        "pkg.masking.mask": {"c"},
    }


def foreign_objective_imports(root: Path) -> list[str]:
    """Every import, in a file of an objective folder (``<root>/models/<a>/``), of another objective's folder
    (``<package>.models.<b>``, ``b != a``): module-level, function-level and relative ones.

    Returns:
        ``"<file relative to root>: <imported name>"`` for each, sorted.
    """
    models = f"{root.name}.models."
    found = []
    for path in sorted((root / "models").rglob("*.py")):
        parts = path.relative_to(root / "models").parts
        if len(parts) < 2:  # models/__init__.py belongs to no objective
            continue
        name = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        targets = set(imported_names(tree, name, path.name == "__init__.py").values())
        targets |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        for target in sorted(targets):
            if target.startswith(models) and target.removeprefix(models).split(".")[0] != parts[0]:
                found.append(f"{path.relative_to(root)}: {target}")
    return found


def test_no_objective_folder_imports_another_one():
    foreign = foreign_objective_imports(PACKAGE_ROOT)
    assert not foreign, (
        f"objective folders importing another objective's folder (move the part to a shared module): {foreign}"
    )


def test_the_import_scan_finds_every_kind_of_foreign_import(tmp_path):
    root = tmp_path / "pkg"
    write(
        root,
        {
            "__init__.py": "",
            "losses.py": "",
            "models/__init__.py": "from pkg.models.a import run\n",  # the registry: not an objective
            "models/a/__init__.py": "from .model import run\n",  # its own folder: fine
            "models/a/model.py": """
                from pkg.losses import x
                from pkg.models.a.helpers import y

                def run():
                    from ..b.model import z  # function-level, relative
                    return z
                """,
            "models/a/helpers.py": "import pkg.models.c.parts\n",
            "models/b/__init__.py": "",
            "models/b/model.py": "from pkg.models import c\n",
            "models/c/__init__.py": "",
        },
    )
    assert foreign_objective_imports(root) == [
        "models/a/helpers.py: pkg.models.c.parts",
        "models/a/model.py: pkg.models.b.model.z",
        "models/b/model.py: pkg.models.c",
    ]
