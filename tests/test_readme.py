"""The README's snippets run as written, against a small work directory laid out as `alad run` leaves it.

Python blocks run in a fresh interpreter; every `alad` command of the bash blocks parses and its
config resolves, and the predict/export commands run. The models are tiny and random (the real MiniLM
tokenizer, real file layouts): what is proved is that the snippets' calls, paths and shapes are right,
so they cannot rot again. The README itself stays a user's guide: at most 300 lines, the two
commands `.ci/run` uses, and links that lead somewhere.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from alad_jax.adapter import AlignmentAdapter, export_reference, import_reference
from alad_jax.data.tagging import UPOS_LABELS
from alad_jax.errors import AladError
from alad_jax.inference import save_aligned_model
from alad_train.config import load_config
from alad_jax.models import EncoderConfig, TaggingHead, build_encoder, hub
from alad_train import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "jax2onnx"))
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.S | re.M)
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```$", README, flags=re.S | re.M)
UD_SAMPLE = REPO / "tests" / "fixtures" / "data" / "ud_sample.conllu"
# Written by the engineers who own them (issue 30 and the statistics / scaling work); linked already.
PLACEHOLDER_DOCS = {"docs/guide.md", "docs/statistics.md", "docs/scaling.md"}


def _encoder(hidden: int, seed: int):
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=hidden, num_layers=1, num_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=64)
    return build_encoder(config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A directory holding runs/default with what the snippet reads: teacher (H24), student (H16), adapters, a saved model."""
    root = tmp_path_factory.mktemp("readme")
    workdir = root / "runs" / "default"
    tokenizer = hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    save_aligned_model(workdir / "models" / "teacher", encoder=_encoder(24, 0), adapter=None,
                       head=TaggingHead(24, len(UPOS_LABELS), rngs=nnx.Rngs(4)), labels=UPOS_LABELS, task="pos",
                       max_length=32, stride=8, tokenizer=tokenizer, meta={"teacher": "t", "student": "t"})
    student = _encoder(16, 1)
    hub.save_encoder(student, workdir / "models" / "student", tokenizer=tokenizer)
    adapter = AlignmentAdapter(16, 24, 3, 32, rngs=nnx.Rngs(2))
    export_reference(adapter, workdir / "adapters" / "w3_continual.safetensors")
    for case, seed in (("frozen", 3), ("joint", 5)):
        save_aligned_model(workdir / "models" / f"alad_w3_{case}", encoder=student, adapter=adapter,
                           head=TaggingHead(24, len(UPOS_LABELS), rngs=nnx.Rngs(seed)), labels=UPOS_LABELS,
                           task="pos", max_length=32, stride=8, tokenizer=tokenizer,
                           meta={"teacher": "t", "student": "s"})
    if HAS_ONNX:  # what `alad export --model runs/default --format onnx --out served/frozen.onnx` writes
        (root / "served").mkdir()
        from alad_jax.inference.onnx_export import export_onnx

        export_onnx(workdir / "models" / "alad_w3_frozen", root / "served" / "frozen.onnx")
    return root


def test_readme_has_a_python_block():
    assert PYTHON_BLOCKS and any("import_reference" in block for block in PYTHON_BLOCKS)


@pytest.mark.slow  # a fresh interpreter imports jax, flax and transformers
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs_as_written(run_root, tmp_path, index):
    if "onnxruntime" in PYTHON_BLOCKS[index] and not HAS_ONNX:
        pytest.skip("the onnx extra is not installed (bash scripts/setup.sh onnx)")
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(PYTHON_BLOCKS[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(script)], cwd=run_root, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if "token cosine to the teacher" in PYTHON_BLOCKS[index]:
        cosine_line, labels_line = out.stdout.strip().splitlines()[-2:]
        assert -1.0 <= float(cosine_line.rsplit(":", 1)[1]) <= 1.0
        (labels,) = _printed_lists(labels_line)
        assert len(labels) == 6 and set(labels) <= set(UPOS_LABELS)  # one label per word of the sentence
    if "onnxruntime" in PYTHON_BLOCKS[index]:
        first, second, long = (_printed_lists(line)[0] for line in out.stdout.strip().splitlines()[-3:])
        assert len(first) == 6 and len(second) == 3 and set(first + second + long) <= set(UPOS_LABELS)
        # A sentence longer than max_length (32 here) sub-words is truncated: the words that fit get labels.
        assert 0 < len(long) < 100


def _printed_lists(text: str) -> list[list[str]]:
    """``[['DET', 'NOUN']]`` printed by Python -> the nested list, parsed without eval."""
    return [re.findall(r"'([^']*)'", inner) for inner in re.findall(r"\[([^\[\]]*)\]", text)]


def test_an_authors_adapter_file_needs_the_argument_the_readme_names(tmp_path):
    """The reference code saves a bare state dict: fc1 [1280, 3*384] is ambiguous without window= or student_dim=."""
    rng = np.random.default_rng(0)
    tensors = {"fc1.weight": rng.normal(size=(1280, 1152)).astype(np.float32), "fc1.bias": np.zeros(1280, np.float32),
               "fc2.weight": rng.normal(size=(384, 1280)).astype(np.float32), "fc2.bias": np.zeros(384, np.float32)}
    path = tmp_path / "theirs.safetensors"
    save_file(tensors, str(path))  # no metadata, as torch's save_file(state_dict) writes it
    with pytest.raises(AladError, match=r"input width 1152 is ambiguous .*K=3 x Ds=384.*K=9 x Ds=128.*window="):
        import_reference(path)
    assert "import_reference(path, window=3)" in README and "import_reference(path, student_dim=384)" in README
    for adapter in (import_reference(path, window=3), import_reference(path, student_dim=384)):
        assert (adapter.window, adapter.student_dim, adapter.teacher_dim) == (3, 384, 384)


def _commands(block: str) -> list[list[str]]:
    """Every simple command of a bash block as words: continuation lines joined, comments dropped,
    split at ``|``, ``&&``, ``;`` and ``&``, leading ``VAR=value`` assignments dropped."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words + [";"]:
            if word in ("|", "&&", ";", "&") or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    current.append(word[:-1])
                while current and re.match(r"^[A-Z_]+=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


ALAD_COMMANDS = [words[1:] for block in BASH_BLOCKS for words in _commands(block)
                 if words[0] in ("alad", ".venv/bin/alad")]


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len(README.splitlines()) <= 300


def test_the_two_commands_are_the_ones_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    tests = "bash scripts/setup.sh test && .venv/bin/python -m pytest -q"
    assert tests in ci and tests in BASH_BLOCKS[0]
    assert "bash scripts/setup.sh && .venv/bin/alad run" in BASH_BLOCKS[0]


def _slug(heading: str) -> str:
    """A Markdown heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", "docs/results.md", "docs/internals.md", "docs/speed_history.md"])
def test_links_to_files_and_their_sections_lead_somewhere(page):
    source = REPO / page
    for target, anchor in re.findall(r"\]\(([^)#]+)(?:#([^)]*))?\)", source.read_text(encoding="utf-8")):
        path = (source.parent / target).resolve()
        if "://" in target or path.relative_to(REPO).as_posix() in PLACEHOLDER_DOCS:
            continue
        assert path.exists(), f"{page}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page}: {target}#{anchor}"


@pytest.mark.parametrize("args", ALAD_COMMANDS, ids=" ".join)
def test_every_alad_command_parses_and_its_config_resolves(args):
    """A renamed option or config key in a README command fails here, not for the user."""
    try:
        parsed = cli._parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"alad {' '.join(args)}: argparse exited {e.code}")
    if parsed.command == "run":
        load_config(REPO / parsed.config if parsed.config else None, parsed.overrides)


def test_readme_predicts_and_exports_the_commands_of_the_quick_start(run_root, tmp_path, monkeypatch, capsys):
    """Every `alad predict` / `alad export` of the README runs as written (stdin piped from `cat FILE`)
    on a copy of the test's work directory, with the input files the commands name."""
    if not HAS_ONNX:
        pytest.skip("the onnx extra is not installed (bash scripts/setup.sh onnx)")
    shutil.copytree(run_root / "runs", tmp_path / "runs")
    shutil.copy(UD_SAMPLE, tmp_path / "sentences.conllu")
    (tmp_path / "sentences.txt").write_text("O menino comeu a maçã .\nEle saiu .\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    ran = []
    for block in BASH_BLOCKS:
        words_list = _commands(block)
        for i, words in enumerate(words_list):
            if words[0] != "alad" or words[1] not in ("predict", "export"):
                continue
            previous = words_list[i - 1] if i else []
            stdin = (tmp_path / previous[1]).read_bytes() if previous[:1] == ["cat"] else b""
            monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
            assert cli.main(words[1:]) == 0, " ".join(words)
            out = capsys.readouterr()
            if "--out" in words and words[1] == "predict":
                written = Path(words[words.index("--out") + 1]).read_text(encoding="utf-8")
                assert written.startswith("# newdoc id = doc1") and "2-3\tà\t_" in written  # CoNLL-U kept
            elif words[1] == "predict" and "--output-format" in words:
                assert [json.loads(line)["words"] for line in out.out.splitlines()] == [
                    "O menino comeu a maçã .".split(), "Ele saiu .".split()]
            elif words[1] == "predict":
                assert len(out.out.strip().splitlines()) == len(words[words.index("--text") + 1].split())
            ran.append(" ".join(words[:2]))
    assert ran.count("alad predict") >= 3 and ran.count("alad export") == 2


@pytest.mark.parametrize("block", ["ner", "mpnet"])
def test_tables_moved_to_docs_stay_generated(block):
    """The NER and MPNet tables left the README for docs/results.md with their markers, so
    `scripts/results_table.py --readme docs/results.md --block NAME` still rewrites them."""
    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    inside = text.split(f"<!-- results-table:{block}:begin -->\n", 1)[1].split(f"<!-- results-table:{block}:end -->")[0]
    assert inside.startswith("Generated by `python scripts/results_table.py` from ")
    assert f"results-table:{block}:" not in README
