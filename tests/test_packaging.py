"""The wheel ships every file of the package: the console's static page, the stubs, the CLI."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

ROOT = Path(__file__).resolve().parent.parent


def package_files() -> set[str]:
    """The files under meshbreaker/ that git tracks (or, outside a git checkout, that exist)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "meshbreaker"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [
            str(path.relative_to(ROOT))
            for path in (ROOT / "meshbreaker").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ]
    return set(listed)


def test_the_wheel_holds_every_package_file_and_the_cli(tmp_path: Path) -> None:
    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    expected = package_files()
    assert "meshbreaker/control/console/static/index.html" in expected  # the listing is real
    assert expected - names == set()
    assert "meshbreaker = meshbreaker.cli:main" in scripts
