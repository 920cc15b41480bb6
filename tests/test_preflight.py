"""Start-up: every input is checked before the first step, and a run that never started claims nothing.

No model is trained here: each run below stops in its first seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alad_train.config import dump_toml, load_config
from alad_jax.errors import AladError
from alad_train import pipeline
from alad_train.preflight import preflight

REPO = Path(__file__).resolve().parents[1]


def test_qa_config_without_its_corpus_stops_at_start_up_in_one_line(tmp_path):
    """The paper's QA config needs a corpus file it cannot ship: said at once, before the Hub or any training."""
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "alad_train.cli", "run", "--config", str(REPO / "configs" / "qa_squad_v2.toml"),
                          "--workdir", str(workdir)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "corpus.paths[0] = 'wiki_sentences.txt': no such file" in line
    assert not (workdir / "progress.json").exists()


def _tiny_overrides(root: Path) -> list[str]:
    """Real files for every input: the packaged MiniLM (teacher and student) and a small UD file."""
    data = root / "train.conllu"
    text = (REPO / "tests" / "fixtures" / "data" / "ud_sample.conllu").read_text(encoding="utf-8")
    data.write_text(text, encoding="utf-8")
    return [f"data.train={data}", f"corpus.paths=[\"{data}\"]"]


def test_every_missing_file_is_named_with_its_config_key(tmp_path):
    cfg = load_config(None, _tiny_overrides(tmp_path) + [
        f"data.dev={tmp_path / 'no-dev.conllu'}", f"data.test={tmp_path / 'no-test.conllu'}",
        f"corpus.paths=[\"{tmp_path / 'train.conllu'}\", \"{tmp_path / 'no-corpus.txt'}\"]",
    ])
    with pytest.raises(AladError) as error:
        preflight(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith("missing inputs (checked before any training)")
    for key, name in (("data.dev", "no-dev.conllu"), ("data.test", "no-test.conllu"),
                      ("corpus.paths[1]", "no-corpus.txt")):
        assert f"{key} = '{tmp_path / name}': no such file" in message
    assert "data.train" not in message and "corpus.paths[0]" not in message


@pytest.mark.parametrize("key, value, expected", [
    ("data.train", "packaged:nosuch", "data.train = 'packaged:nosuch': unknown packaged corpus 'nosuch'"),
    ("corpus.format", "json", "config key 'corpus.format' is 'json'"),
    ("teacher", "./no-such-model", "config key 'teacher' = './no-such-model': model directory"),
    ("student", "/no/such/student", "config key 'student' = '/no/such/student': model directory"),
])
def test_a_missing_model_or_unusable_input_is_one_line_naming_its_key(tmp_path, key, value, expected):
    cfg = load_config(None, _tiny_overrides(tmp_path) + [f"{key}={value}"])
    with pytest.raises(AladError) as error:
        preflight(cfg)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_model_directory_without_tokenizer_files_is_refused(tmp_path):
    from alad_jax.models import hub

    model = tmp_path / "model"
    model.mkdir()
    packaged = hub.resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    for name in ("config.json", "model.safetensors"):
        (model / name).symlink_to(packaged / name)
    cfg = load_config(None, _tiny_overrides(tmp_path) + [f"student={model}"])
    with pytest.raises(AladError, match=r"config key 'student' = .*: .*no tokenizer files"):
        preflight(cfg)


def test_complete_inputs_pass(tmp_path):
    preflight(load_config(None, _tiny_overrides(tmp_path)))


def test_the_corpus_is_checked_only_when_a_chosen_case_needs_stage_1(tmp_path):
    missing = f"corpus.paths=[\"{tmp_path / 'no-corpus.txt'}\"]"
    preflight(load_config(None, _tiny_overrides(tmp_path) + [missing, 'cases=["probe", "noalign_frozen"]']))
    preflight(load_config(None, _tiny_overrides(tmp_path) + ["corpus.paths=[]", 'cases=["student_ft"]']))
    with pytest.raises(AladError, match="corpus.paths\\[0\\] = .*no-corpus.txt': no such file"):
        preflight(load_config(None, _tiny_overrides(tmp_path) + [missing, 'cases=["head"]']))


# --- the work directory ----------------------------------------------------------------------


def test_a_run_that_failed_at_start_up_does_not_claim_its_workdir(tmp_path):
    workdir = tmp_path / "run"
    first = load_config(None, _tiny_overrides(tmp_path) + [f"corpus.paths=[\"{tmp_path / 'typo.txt'}\"]"])
    with pytest.raises(AladError, match="typo.txt"):
        pipeline.run(first, workdir)
    assert (workdir / "config.toml").read_text() == dump_toml(first)
    (workdir / "models" / "student").mkdir(parents=True)  # as a failed start-up may leave it
    # The corrected config is accepted (no "holds a different config") and replaces the stale one.
    fixed = load_config(None, _tiny_overrides(tmp_path) + ["seed=3"])
    assert pipeline.prepare_workdir(workdir, fixed) == workdir
    assert (workdir / "config.toml").read_text() == dump_toml(fixed)
    assert not (workdir / "models" / "student").exists()  # truncated for the old config: never reused


@pytest.mark.parametrize("started_by", ["progress", "checkpoint"])
def test_a_started_run_refuses_another_config_and_names_the_fixes(tmp_path, started_by):
    workdir = tmp_path / "run"
    old = load_config(None, _tiny_overrides(tmp_path))
    pipeline.prepare_workdir(workdir, old)
    if started_by == "progress":
        (workdir / "progress.json").write_text(json.dumps({"teacher": {"dev": 0.5}}))
    else:
        (workdir / "checkpoints" / "teacher" / "20").mkdir(parents=True)
        (workdir / "checkpoints" / "teacher" / "20" / "meta").write_text("{}")
    new = load_config(None, _tiny_overrides(tmp_path) + ["seed=5"])
    with pytest.raises(AladError) as error:
        pipeline.prepare_workdir(workdir, new)
    message = str(error.value)
    assert "holds a different config ('seed = 0' there, 'seed = 5' now)" in message
    assert "add --restart" in message and "new --workdir" in message
    assert (workdir / "config.toml").read_text() == dump_toml(old)


def test_restart_deletes_the_run_outputs_and_keeps_the_feature_cache_and_foreign_files(tmp_path):
    workdir = tmp_path / "run"
    pipeline.prepare_workdir(workdir, load_config(None, _tiny_overrides(tmp_path)))
    for name in ("progress.json", "results.json", "models/teacher/config.json", "checkpoints/teacher/7/x",
                 "cache/abc.student.npy", "notes.txt"):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text("x")
    new = load_config(None, _tiny_overrides(tmp_path) + ["seed=5"])
    pipeline.prepare_workdir(workdir, new, restart=True)
    assert (workdir / "config.toml").read_text() == dump_toml(new)
    for gone in ("progress.json", "results.json", "models", "checkpoints"):
        assert not (workdir / gone).exists()
    assert (workdir / "cache" / "abc.student.npy").is_file() and (workdir / "notes.txt").is_file()
