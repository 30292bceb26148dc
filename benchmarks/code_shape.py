"""Print the shape of the code: lines per file and the longest functions, to see where a refactor moved things.

Usage: `python benchmarks/code_shape.py [--top N] [PATH ...]` (default: the repo's top-level `*.py` files).
Function lengths count every line from `def` to the last line of the body (docstrings and comments included);
nested functions are counted on their own and inside their parent.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, number of lines) of every function and method in `source`."""
    tree = ast.parse(source)
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((name, start, child.end_lineno - start + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="Python files (default: the repo's top-level *.py).")
    parser.add_argument("--top", type=int, default=5, help="How many of the longest functions to list per file.")
    args = parser.parse_args()
    paths = args.paths or sorted(REPO.glob("*.py"))
    for path in paths:
        if not path.is_file():
            parser.error(f"{path} is not a file (give Python files).")

    total = 0
    print(f"{'file':<28} {'lines':>6} {'funcs':>6} {'>60 lines':>10}")
    rows = []
    for path in paths:
        source = path.read_text()
        lines = source.count("\n")
        total += lines
        functions = function_lengths(source)
        long = sum(1 for _, _, n in functions if n > 60)
        print(f"{path.name:<28} {lines:>6} {len(functions):>6} {long:>10}")
        rows.append((path, functions))
    print(f"{'total':<28} {total:>6}")
    for path, functions in rows:
        print(f"\n{path.name}: longest functions")
        for name, start, n in sorted(functions, key=lambda f: -f[2])[: args.top]:
            print(f"  {n:>5}  {name} (line {start})")


if __name__ == "__main__":
    main()
