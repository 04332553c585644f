"""The user commands: ``python -m vmambair <command>`` dispatches to the apps, and the option files
that ``--task`` needs are found in a non-editable install (no source tree)."""
import subprocess
import sys
from pathlib import Path

from vmambair.__main__ import COMMANDS, main
from tests.helpers import ROOT


def test_every_command_imports_and_answers_help():
    for name, (module, func) in COMMANDS.items():
        mod = __import__(module, fromlist=[func])
        assert callable(getattr(mod, func)), name
    out = subprocess.run([sys.executable, "-m", "vmambair", "stats", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "-opt" in out.stdout


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_installed_copy_of_options_is_found_without_the_source_tree(tmp_path):
    """pip installs options/ as vmambair/options: bundled_options finds it there."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "vmambair" / "options" / "derain.yml").is_file()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from vmambair.config.bundled import bundled_options; print(bundled_options('derain.yml'))")
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == target / "vmambair" / "options" / "derain.yml"
