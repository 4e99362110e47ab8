"""The README's quickstart runs verbatim: its Python block and its shell lines, against a small
real bundle and index laid out where ``make demo`` leaves them (runs/demo/...), in a scratch folder."""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
QUICKSTART_IDS = ("5992", "6054")


def quickstart() -> tuple[str, list[str]]:
    """The Python block and the shell commands of the README's Quickstart section."""
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    section = section[:section.index("\n## ", 4)]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert python, "the Quickstart has no python block"
    shell, current = [], ""
    for line in section.splitlines():
        if line.startswith("    ") and (current or line.strip().startswith(".venv/bin/")):
            current += line.strip().rstrip("\\").strip() + " "
            if not line.rstrip().endswith("\\"):
                shell.append(current.strip())
                current = ""
    assert shell, "the Quickstart has no shell commands"
    return python.group(1), shell


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory, readme_bundle_dir: Path) -> Path:
    """runs/demo/{bundle,index,photo.jpg} as make demo leaves them, over ~200 real photos."""
    from realdata import DATA, require_data

    from fashsdk import Retriever

    require_data()
    base = tmp_path_factory.mktemp("readme")
    demo = base / "runs" / "demo"
    demo.mkdir(parents=True)
    import shutil

    shutil.copytree(readme_bundle_dir, demo / "bundle")
    images: dict[str, bytes] = {}
    with tarfile.open(DATA / "images-000.tar") as tar:
        for member in tar:
            name = Path(member.name).stem
            if member.isfile() and (len(images) < 200 or name in QUICKSTART_IDS):
                images[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
            if len(images) >= 200 and all(i in images for i in QUICKSTART_IDS):
                break
    photo = next(i for i in images if i not in QUICKSTART_IDS)
    (demo / "photo.jpg").write_bytes(images.pop(photo))
    retriever = Retriever(demo / "bundle", threads=1)
    retriever.add(images.items())
    retriever.save_index(demo / "index")
    return base


def test_the_quickstart_python_runs_verbatim(demo_folder: Path) -> None:
    code, _ = quickstart()
    done = subprocess.run([sys.executable, "-c", code], cwd=demo_folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 6 and all(line.split()[0] != "5992" for line in lines[:5])  # results exclude the query


def test_the_quickstart_shell_commands_run_verbatim(demo_folder: Path) -> None:
    _, commands = quickstart()
    for command in commands:
        argv = command.split()
        assert argv[0] == ".venv/bin/fashsdk", command
        done = subprocess.run([sys.executable, "-m", "fashsdk", *argv[1:]], cwd=demo_folder, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr)
        assert '"results"' in done.stdout
