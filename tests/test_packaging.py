"""Packaging: the repository's datasets/, losses/ and decoders/ folders are padt sub-packages only, never top-level
modules (a top-level ``datasets`` would shadow Hugging Face ``datasets``), and the ``padt`` command is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("datasets", "losses", "decoders")


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@pytest.mark.parametrize("name", FOLDERS)
def test_bare_import_from_the_repository_root_never_gives_our_folder(name):
    code = (
        "import json\n"
        "try:\n"
        f"    import {name} as m\n"
        "    print(json.dumps({'file': getattr(m, '__file__', None)}))\n"
        "except ModuleNotFoundError as e:\n"
        "    print(json.dumps({'error': str(e)}))\n"
    )
    result = run_python(code, REPO, clean_env())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in outcome:
        assert f"import padt.{name} instead" in outcome["error"]
    else:  # another installed package of that name (e.g. Hugging Face datasets) is handed over
        assert outcome["file"] is None or not Path(outcome["file"]).resolve().is_relative_to(REPO)




@pytest.mark.parametrize("name", ["datasets", "losses",
                                  "decoders"])
def test_bare_import_hands_over_to_the_real_package_of_that_name(name, tmp_path):
    fake = tmp_path / name
    fake.mkdir()
    (fake / "__init__.py").write_text("WHO = 'the other package'\n")
    code = f"import {name}, padt.{name}; print({name}.WHO); print({name}.__file__); print(padt.{name}.__name__)"
    result = run_python(code, REPO, clean_env(PYTHONPATH=str(tmp_path)))  # the repo root ('' = cwd) comes first
    assert result.returncode == 0, result.stderr
    who, file, sub = result.stdout.strip().splitlines()[-3:]
    assert who == "the other package" and Path(file).resolve() == (fake / "__init__.py").resolve()
    assert sub == f"padt.{name}"


def test_sub_packages_import_from_the_repository_root():
    code = (
        "import sys, padt.datasets, padt.losses, padt.decoders\n"
        "for m in (padt.datasets, padt.losses, padt.decoders): print(m.__name__, m.__file__)\n"
        "print(sorted(n for n in ('datasets', 'losses', 'decoders') if n in sys.modules))\n"
    )
    result = run_python(code, REPO, clean_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    for line, name in zip(lines[:3], FOLDERS, strict=True):
        module, file = line.split(" ", 1)
        assert module == f"padt.{name}" and Path(file).parent.name == name
    assert lines[3] == "[]"  # importing the sub-packages creates no top-level module of those names


def test_installed_distribution_exposes_only_padt(tmp_path):
    # Run outside the repository: from its root, importlib.metadata would also see the source tree's egg-info.
    code = (
        "import json, importlib.metadata as md\n"
        "d = md.distribution('padt')\n"
        "files = [str(f) for f in (d.files or [])]\n"
        "texts = {f: str(d.locate_file(f).read_text()) for f in files if f.endswith(('.pth', '_finder.py'))}\n"
        "print(json.dumps({'top_level': d.read_text('top_level.txt'), 'files': files, 'texts': texts,\n"
        "                  'scripts': [(e.name, e.value) for e in d.entry_points if e.group == 'console_scripts']}))\n"
    )
    result = run_python(code, tmp_path, clean_env())
    if result.returncode != 0 and "PackageNotFoundError" in result.stderr:
        pytest.skip("padt is not installed (pip install -e .)")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    if info["top_level"] is not None:
        assert info["top_level"].split() == ["padt"]
    tops = {Path(f).parts[0] for f in info["files"] if not f.startswith("..")}
    for name in FOLDERS:
        assert name not in tops and f"{name}.py" not in tops
    assert ["padt", "padt.cli:main"] in info["scripts"]
    for path, text in info["texts"].items():
        if path.endswith("_finder.py"):  # setuptools' editable finder: what each importable name maps to
            namespace: dict = {}
            mapping_line = next(line for line in text.splitlines() if line.startswith("MAPPING"))
            exec(mapping_line.replace("MAPPING: dict[str, str] =", "MAPPING ="), namespace)
            mapping = namespace["MAPPING"]
            assert mapping and all(key == "padt" or key.startswith("padt.") for key in mapping)
            for name in FOLDERS:
                assert Path(mapping[f"padt.{name}"]).name == name
        else:  # a path-style .pth would put a folder on sys.path: it must not hold our three folders
            for line in text.splitlines():
                if line.strip() and not line.startswith(("import ", "#")):
                    assert not any((Path(line.strip()) / name / "__init__.py").exists() for name in FOLDERS), line


def test_built_wheel_contains_only_the_padt_package(tmp_path):
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip and setuptools to build a wheel offline")
    source = tmp_path / "src"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        if (REPO / item).exists():
            shutil.copy(REPO / item, source / item)
    for folder in ("padt", *FOLDERS):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean_env(PIP_NO_INDEX="1"),
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("padt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        assert archive.read(f"{info}/top_level.txt").decode().split() == ["padt"]
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"padt", info}
    for name in FOLDERS:
        assert f"padt/{name}/__init__.py" in names
    for shipped in ("model.safetensors", "config.json", "tokenizer.json", "padt_demo_recipe.json"):
        assert f"padt/demo_model/{shipped}" in names  # the demo model travels with the package
    assert "padt = padt.cli:main" in entry_points


def test_padt_console_script_runs(tmp_path):
    script = Path(sys.executable).with_name("padt")
    command = [str(script)] if script.exists() else shutil.which("padt") and [shutil.which("padt")]
    if not command:
        pytest.skip("the padt console script is not installed (pip install -e .)")
    result = subprocess.run([*command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: padt") and "convert" in result.stdout and "train" in result.stdout
    module = subprocess.run(
        [sys.executable, "-m", "padt.cli", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert module.returncode == 0 and module.stdout == result.stdout
    bad = subprocess.run([*command, "no-such-command"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
