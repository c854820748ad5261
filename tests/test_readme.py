"""The README's Python examples run: every ```python block preceded by ``<!-- readme-test -->`` is executed,
in order, in one namespace, in a scratch directory holding a copy of the search spaces."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\s*```python\n(.*?)```", re.S)


def readme_blocks() -> list[str]:
    return MARKED_BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_api_examples():
    blocks = readme_blocks()
    assert len(blocks) >= 2
    assert any("compress.quantize_" in b and "compress.prune_" in b for b in blocks)
    assert any("compress.run_search" in b and "compress.load_artifact" in b for b in blocks)


@pytest.mark.slow
def test_the_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "search_spaces", tmp_path / "search_spaces")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(readme_blocks()):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "runs" / "api-example" / "artifacts").is_dir()
    assert "['0', '3']" in capsys.readouterr().out  # the INT8 layers the first example prints
