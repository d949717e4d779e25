"""ARCHITECTURE.md's module table names every module of ``amanita/`` (recursively), and nothing else."""
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
