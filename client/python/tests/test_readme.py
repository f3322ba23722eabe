"""Every Python example in client/python/README.md (and in the root README.md) runs as written
against a fresh
`hangar-server dev`: each block in its own interpreter, with the README's default address
replaced by the test server's. A block marked `<!-- readme-test: skip … -->` says why it is not
run (and which test covers it instead)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cluster import REPO

READMES = [REPO / "client" / "python" / "README.md", REPO / "README.md"]
DEFAULT_URL = "http://127.0.0.1:7070"


def examples() -> list[tuple[str, str]]:
    found = []
    for readme in READMES:
        text = readme.read_text()
        for match in re.finditer(r"(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```", text, re.S):
            if match.group(1):
                continue
            line = text.count("\n", 0, match.start(2)) + 1
            found.append((f"{readme.relative_to(REPO)}:{line}", match.group(2)))
    return found


def test_the_readme_has_examples_to_run():
    assert len(examples()) >= 5


@pytest.mark.parametrize("where,code", examples(), ids=[where for where, _ in examples()])
def test_readme_example_runs(dev, where, code, tmp_path):
    assert DEFAULT_URL in code, f"{where}: an example talks to dev's default address"
    result = subprocess.run([sys.executable, "-c", code.replace(DEFAULT_URL, dev.url)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{where} printed nothing"
    if where.startswith("README.md:"):
        # The root README's example prints a backend's state: by its name, as the comment beside
        # it says, never as the proto enum's number.
        words = [word.strip("[](),'\"") for word in result.stdout.split()]
        assert "READY" in words, f"{where} printed no state name:\n{result.stdout}"
        numbers = [word for word in words if word.isdigit()]
        assert not numbers, f"{where} printed raw enum numbers {numbers}:\n{result.stdout}"
