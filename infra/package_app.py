"""Build the deployment zip of the Functions app the way `func pack` and azd do: the repository root minus
what `.funcignore` excludes (gitignore syntax), minus `__pycache__/` and `local.settings.json` always.

    python infra/package_app.py --out /tmp/bridge.zip      # then: az functionapp deployment source config-zip ...

`git archive` does not read `.funcignore` and would ship tests/, emulator/, devhost/, docs/ and infra/ too.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

import pathspec

ALWAYS_EXCLUDED = ["__pycache__/", "*.pyc", "local.settings.json", ".git/"]


def package_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files that belong in the package, sorted."""
    ignore = root / ".funcignore"
    lines = ignore.read_text(encoding="utf-8-sig").splitlines() if ignore.exists() else []
    spec = pathspec.GitIgnoreSpec.from_lines(ALWAYS_EXCLUDED + lines)
    files = []
    for directory, dirs, names in os.walk(root):
        rel_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = sorted(d for d in dirs if not spec.match_file(prefix + d + "/"))  # prune: never walk .venv/, node_modules/
        files += [prefix + n for n in names if not spec.match_file(prefix + n)]
    return sorted(files)


def build(root: Path, out: Path) -> list[str]:
    files = package_files(root)
    for required in ("function_app.py", "host.json", "requirements.txt"):
        if required not in files:
            raise SystemExit(f"error: {required} is excluded or missing under {root}; check .funcignore")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(root / name, name)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="app root (default: the repository)")
    parser.add_argument("--out", type=Path, required=True, help="zip file to write")
    args = parser.parse_args(argv)
    files = build(args.root.resolve(), args.out)
    print(f"{args.out}: {len(files)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
