"""`pip install .` puts exactly one top-level name, txmail, into site-packages, and the
package list in pyproject.toml names every package folder of the repository."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        tool: dict[str, object] = tomllib.load(file)["tool"]["setuptools"]
    return tool


def test_every_package_folder_is_listed() -> None:
    tool = _setuptools()
    package_dir: dict[str, str] = tool["package-dir"]  # type: ignore[assignment]
    folders = {}
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            folders[".".join((name, *relative))] = init.parent
    assert sorted(folders) == sorted(tool["packages"])  # type: ignore[call-overload]


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    # Built from a copy of what the wheel is made of: setuptools leaves build/lib in the
    # tree it builds from, and a stale file there would end up in the next wheel.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("src", "ingress", "workers", "fallback"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("txmail-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"txmail"}
    assert "txmail/py.typed" in names
    assert "txmail/workers/store/postgres.py" in names
    # The console's pages load only what the package ships.
    for shipped in ("templates/base.html", "static/console.css", "static/console.js"):
        assert f"txmail/workers/console/{shipped}" in names
