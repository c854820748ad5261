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


# -- 2. a storage URL's password reaches no file, log line or message ------------------------------------------

SECRET = "s3cret-Pw9"


def _files_holding(root, secret):
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("url", ["postgresql://compress:{s}@127.0.0.1:9/compress",
                                 "postgresql://127.0.0.1:9/compress?user=compress&password={s}"])
def test_unreachable_storage_password_is_in_no_file_or_message(tmp_path, url):
    recipe = tiny_recipe(tmp_path, search={"n_trials": 2, "storage": url.format(s=SECRET)})
    for command in ("search", "run"):
        proc = cli(command, str(recipe))
        assert proc.returncode == 2, proc.stderr
        assert "storage" in proc.stderr and SECRET not in proc.stdout + proc.stderr
        assert not _files_holding(tmp_path / "run", SECRET) if (tmp_path / "run").exists() else True


def test_redact_url_hides_passwords_in_user_info_and_query():
    from compress.search.study import redact_url

    for url in (f"postgresql://me:{SECRET}@db.example/x", f"postgresql://db.example/x?user=me&password={SECRET}",
                f"mysql://me:{SECRET}@h/x?sslpassword={SECRET}", f"postgresql://me:{SECRET}@h:5432/x?passwd={SECRET}"):
        assert SECRET not in redact_url(url), url
        assert "***" in redact_url(url)
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_search_with_a_password_in_the_query_writes_it_nowhere(tiny_run, tmp_path):
    run = tmp_path / "run"
    url = f"sqlite:///{run / 'study.db'}?password={SECRET}"
    recipe = tiny_run(search={"n_trials": 2, "storage": url})
    proc = cli("search", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not _files_holding(run, SECRET)
    # Without the password, the run directory cannot name the storage: the user is asked for it, by name.
    proc = cli("report", str(run))
    assert proc.returncode == 2 and "--storage" in proc.stderr and SECRET not in proc.stderr
    proc = cli("report", str(run), "--storage", url)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and not _files_holding(run, SECRET)
