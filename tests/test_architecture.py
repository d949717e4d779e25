"""ARCHITECTURE.md's module table names every module of ``amanita/`` (recursively), and nothing else; the
package never imports its command line."""
import re

from tests.helpers import ROOT


def package_modules(root=ROOT / "amanita") -> set[str]:
    """``taxonomy``, ``report/`` (a package), ``report/figures`` ...: every module under ``root``."""
    out = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            if len(parts) > 1:
                out.add("/".join(parts[:-1]) + "/")
        else:
            out.add("/".join(parts))
    return out


def table_modules(text: str) -> set[str]:
    """The names in backticks in the first column of the table under ``## Modules``."""
    section = text.split("\n## Modules", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_table_parser_reads_names_of_the_first_column_only():
    text = "# Map\n## Modules\n| module | owns |\n|---|---|\n| `a`, `b/c` | uses `d` |\n| `e/` | x |\n## Next\n| `f` | y |\n"
    assert table_modules(text) == {"a", "b/c", "e/"}


def test_every_module_is_in_the_architecture_table():
    missing = package_modules() - table_modules((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert not missing, f"ARCHITECTURE.md's module table lacks {sorted(missing)}"


def test_the_architecture_table_names_no_missing_module():
    extra = table_modules((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")) - package_modules()
    assert not extra, f"ARCHITECTURE.md's module table names modules that do not exist: {sorted(extra)}"


def amanita_imports(path) -> set[str]:
    """The ``amanita`` modules ``path`` imports, at its top or inside a function."""
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "amanita"}
        elif isinstance(node, ast.ImportFrom):
            module = f"amanita.{node.module or ''}".rstrip(".") if node.level else node.module or ""
            if module.split(".")[0] == "amanita":  # ``from amanita import cli`` imports the module amanita.cli
                out |= {f"amanita.{a.name}" for a in node.names} if module == "amanita" else {module}
    return out


def test_import_reader_sees_every_spelling(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import amanita.cli\nfrom amanita import cli, io\ndef f():\n    from amanita.cli import x\n"
                 "from .cli import y\nimport json\n")
    assert amanita_imports(f) == {"amanita.cli", "amanita.io"}
    f.write_text("from . import cli\nimport numpy\n")
    assert amanita_imports(f) == {"amanita.cli"}


def test_flags_stop_at_the_scripts():
    """No module of the package imports ``cli`` (the scripts parse), and ``cli`` imports no domain
    module: only ``amanita.config``, the contract both sides share."""
    importers = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "amanita").rglob("*.py")
                       if p.name != "cli.py" and "amanita.cli" in amanita_imports(p))
    assert not importers, f"these modules import amanita.cli: {importers}"
    assert amanita_imports(ROOT / "amanita" / "cli.py") <= {"amanita.config"}
