"""Hardening (issue 13): each case a user or an attacker could meet, checked through the code they would use.

Bad input ends in one line naming the file, field or value, exit 2; secrets reach no file, log or message.
"""

import subprocess
import sys

import pytest

from tests.conftest import tiny_recipe


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# -- 1. the error printer shows messages as they are ------------------------------------------------------------

@pytest.mark.parametrize("text", ["/data/[train] is missing", "see [/tmp] and [bold]x[/bold]"])
def test_error_printer_keeps_brackets(capsys, monkeypatch, text):
    import compress.cli as cli_module
    from compress.errors import CompressError

    def fail(_args):
        raise CompressError(text)

    monkeypatch.setattr(cli_module, "cmd_validate", fail)
    assert cli_module.main(["validate", "x"]) == 2
    err = capsys.readouterr().err
    assert text in err and err.startswith("error:")


def test_missing_data_path_with_brackets_is_named_in_full(tmp_path):
    recipe = tiny_recipe(tmp_path, data={"source": "imagefolder", "path": str(tmp_path / "[train]")})
    proc = cli("validate", str(recipe))
    assert proc.returncode == 2
    assert "[train]" in proc.stderr, proc.stderr
