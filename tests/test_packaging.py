"""What `pip install zmqbus` puts in a user's environment."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _listed() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_setup_cfg_lists_every_package() -> None:
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "zmqbus").rglob("__init__.py")}
    assert found | {"zmqbus.components"} == _listed()


def test_the_wheel_installs_components_under_zmqbus_and_registers_the_pytest_plugin(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: pip builds in the source tree (build/, *.egg-info)
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("zmqbus", "components"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("zmqbus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "zmqbus/components/ingest.py" in names and "zmqbus/testing/plugin.py" in names
    assert not [n for n in names if n.startswith("components/")], "a top-level 'components' package"
    assert "zmqbus/py.typed" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[pytest11]\nzmqbus = zmqbus.testing.plugin" in entry_points


@pytest.mark.timeout(420)
def test_a_user_folder_with_only_the_testing_extra_runs_an_async_test_with_an_async_fixture(tmp_path: Path) -> None:
    """``pip install 'zmqbus[testing]'`` in a fresh virtual environment (no other async plugin):
    the plugin runs a test that uses ``bus`` and an ``async def`` fixture."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("zmqbus", "components"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{src}[testing]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True, timeout=60).stdout
    assert "pytest " in listed and "pytest-asyncio" not in listed and "anyio" not in listed
    user = tmp_path / "user"
    user.mkdir()
    (user / "test_user.py").write_text(
        "import pytest\n"
        "from zmqbus import Processor, service\n\n"
        "class Echo(Processor):\n"
        '    @service("echo")\n'
        "    async def echo(self, message):\n"
        "        return message.content\n\n"
        "@pytest.fixture\n"
        "async def echo(bus):\n"
        "    return await bus.start(Echo)\n\n"
        "async def test_echo(bus, echo):\n"
        '    assert await bus.request("echo", [1, 2]) == [1, 2]\n'
    )
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
