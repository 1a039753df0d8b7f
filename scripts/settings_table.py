#!/usr/bin/env python3
"""Rewrite the README's settings section from `.env.example`, so the two never disagree.

python scripts/settings_table.py          # rewrite README.md between the SETTINGS markers
python scripts/settings_table.py --check  # exit 1 if README.md is out of date (tests run this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- SETTINGS:BEGIN -->", "<!-- SETTINGS:END -->"
SECTION = re.compile(r"^# -+ (.+?) -*$")
VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def table(env_example: str) -> str:
    """Markdown: one table per `.env.example` section; a variable's description is the comment above it."""
    out: list[str] = []
    comment: list[str] = []  # the comment block above; it describes every variable up to the next one
    after_variable = False
    for line in env_example.splitlines():
        if match := SECTION.match(line):
            out += ["", f"**{match.group(1)}**", "", "| setting | default | meaning |", "|---|---|---|"]
            comment, after_variable = [], False
        elif line.startswith("#"):
            if after_variable:
                comment, after_variable = [], False
            comment.append(line.lstrip("# ").strip())
        elif match := VARIABLE.match(line):
            after_variable = True
            name, default = match.groups()
            default = default.strip('"')
            default = f"`{default}`" if default else "(empty)"
            if len(default) > 60:
                default = default[:57] + "…`"
            meaning = " ".join(comment).replace("|", "\\|")
            out.append(f"| `{name}` | {default} | {meaning} |")
        else:
            comment, after_variable = [], False
    return "\n".join(out).strip() + "\n"


def render(readme: str, env_example: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(env_example)}{END}{tail}"


def main() -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        print("README.md has no settings markers", file=sys.stderr)
        return 1
    new = render(readme, (ROOT / ".env.example").read_text(encoding="utf-8"))
    if "--check" in sys.argv:
        if new != readme:
            print("README.md settings are out of date: run python scripts/settings_table.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
