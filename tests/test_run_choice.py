"""Train only what you deploy, bring your own teacher, keep the disk small, look before you train.

Runs `alad run` on tiny random encoders (the real MiniLM tokenizer, real Porttinari sentences) and, for
the own-teacher case, on the real all-MiniLM-L6-v2 with a token classifier over the UD UPOS labels written
in Hugging Face's token-classification layout.
"""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from alad_train.config import MINILM, load_config
from alad_jax.data.readers import read_conllu
from alad_jax.data.tagging import UPOS_LABELS
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models.hub import load_tokenizer
from alad_train import cases, own_teacher, pipeline
from alad_train.stages import common
import tiny_inputs  # tests/helpers, on the path through tests/conftest.py

STAGES = ("teacher", "head", "frozen", "joint", "probe", "student_ft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, xla_cache):
    """Tiny random teacher (H48) and student (H32), real sentences, a few epochs per stage."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_inputs.write_encoders(root, {"teacher": (48, 2), "student": (32, 1)}, max_positions=128)
    tiny_inputs.write_ud_splits(root, {"train": (0, 64), "dev": (64, 80), "test": (80, 96)}, corpus=(0, 48))
    overrides = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0",
        f"data.train={root / 'train.conllu'}", f"data.dev={root / 'dev.conllu'}", f"data.test={root / 'test.conllu'}",
        "data.max_train=0", "data.max_dev=0", "data.max_test=0",
        f'corpus.paths=["{root / "corpus.conllu"}"]', "corpus.max_sentences=36", "corpus.val_sentences=12",
        "adapter_hidden=64", "eval_batch_size=16", "latency_batches=2", "checkpoint_every=8",
        "stages.align.token_budget=512", "stages.continual.token_budget=512",
    ] + [f"stages.{s}.batch_size=16" for s in STAGES] + [f"stages.{s}.epochs=2" for s in (*STAGES, "align", "continual")]
    env = dict(xla_cache)
    return root, overrides, env


class _FitLog:
    """Wraps the stages' ``fit``: the names of the stages that trained."""

    def __init__(self, monkeypatch):
        self.names = []
        real = common.fit

        def fit(*args, name, **kwargs):
            self.names.append(name)
            return real(*args, name=name, **kwargs)

        monkeypatch.setattr(common, "fit", fit)


@pytest.fixture(scope="module")
def frozen_run(tiny, tmp_path_factory):
    _, overrides, _ = tiny
    workdir = tmp_path_factory.mktemp("frozen")
    with pytest.MonkeyPatch.context() as monkeypatch:
        trained = _FitLog(monkeypatch)
        results = pipeline.run(load_config(None, [*overrides, 'cases=["frozen"]']), workdir)
    return workdir, results, trained.names


def _alad(*args):
    return [sys.executable, "-m", "alad_train.cli", *args]


def test_frozen_alone_trains_the_teacher_stages_1_2_and_itself_only(frozen_run):
    workdir, results, trained = frozen_run
    assert trained == ["teacher", "align_w3", "continual_w3", "alad_w3_frozen"]
    progress = json.loads((workdir / "progress.json").read_text())
    assert list(progress) == ["teacher", "align_w3", "continual_w3", "alad_w3_frozen", "latency"]
    on_disk = json.loads((workdir / "results.json").read_text())
    assert [r["name"] for r in on_disk["rows"]] == ["teacher", "alad_w3_frozen"]
    assert on_disk["cases"] == ["frozen"] and on_disk["rows"][1]["cosine"] > 0
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["alad_w3_frozen", "teacher"]
    assert any("not trained (config key cases = ['frozen']): student_probe, student_ft, alad_w3_head" in n
               for n in on_disk["notes"])


def test_the_report_compares_only_what_was_trained_and_says_what_it_cannot_conclude(frozen_run):
    workdir, _, _ = frozen_run
    text = (workdir / "results.md").read_text()
    assert "## What this run cannot conclude" in text
    assert ("- alignment's gain vs a fresh adapter (the no-alignment ablation): not measured, "
            "alad_w3_noalign_frozen was not trained") in text
    assert "- gap recovered: not computed, student_probe (its lower end) was not trained" in text
    assert "- alad_w3_frozen vs alad_w3_noalign_frozen: not measured, alad_w3_noalign_frozen not trained" in text
    assert "| alad_w3_joint |" not in text and "| alad_w3_frozen |" in text


def test_finished_stages_leave_no_checkpoints_and_a_rerun_trains_nothing(frozen_run, tiny, monkeypatch):
    workdir, results, _ = frozen_run
    _, overrides, _ = tiny
    assert not list((workdir / "checkpoints").iterdir())
    assert (workdir / "cache").is_dir() and any((workdir / "cache").iterdir())  # keep_cache = true (default)
    progress = (workdir / "progress.json").read_text()
    trained = _FitLog(monkeypatch)
    again = pipeline.run(load_config(None, [*overrides, 'cases=["frozen"]']), workdir)
    assert trained.names == [] and (workdir / "progress.json").read_text() == progress
    keep = ("name", "dev", "test", "params", "cosine")
    assert [{k: r[k] for k in keep} for r in again["rows"]] == [{k: r[k] for k in keep} for r in results["rows"]]


def test_check_prints_the_plan_with_what_is_done_and_trains_nothing(frozen_run, tiny, tmp_path):
    workdir, _, _ = frozen_run
    _, overrides, env = tiny
    before = sorted((p.relative_to(workdir), p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    out = subprocess.run(_alad("run", "--check", "--workdir", str(workdir), *overrides, 'cases=["frozen"]'),
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("teacher", "align_w3", "continual_w3", "alad_w3_frozen", "latency"):
        assert any(line.split()[2:4] == [name, "done"] or line.split()[1:3] == [name, "done"]
                   for line in out.stdout.splitlines()), (name, out.stdout)
    assert "results.json rows: teacher, alad_w3_frozen" in out.stdout and "--check: nothing trained" in out.stdout
    assert sorted((p.relative_to(workdir), p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before

    fresh = tmp_path / "fresh"
    out = subprocess.run(_alad("run", "--check", "--workdir", str(fresh), *overrides, 'cases=["noalign_frozen"]'),
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "align_w3" not in out.stdout and "alad_w3_noalign_frozen  to run" in out.stdout
    assert not fresh.exists()


def test_an_unknown_case_is_one_line_naming_the_valid_ones(tiny, tmp_path):
    _, overrides, env = tiny
    out = subprocess.run(_alad("run", "--workdir", str(tmp_path / "w"), *overrides, 'cases=["frozen","probes"]'),
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "unknown case 'probes'; use any of probe, student_ft, head, frozen, joint, noalign_frozen" in out.stderr
    assert not (tmp_path / "w").exists()


def test_kept_checkpoints_stay_and_a_dropped_cache_goes(tiny, tmp_path):
    _, overrides, _ = tiny
    workdir = tmp_path / "keep"
    results = pipeline.run(load_config(None, [*overrides, 'cases=["probe"]', "keep_checkpoints=true",
                                              "keep_cache=false"]), workdir)
    assert [r["name"] for r in results["rows"]] == ["teacher", "student_probe"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["student_probe", "teacher"]
    assert not (workdir / "cache").exists()
    text = (workdir / "results.md").read_text()
    assert "- whether alignment helps: not measured, no AlAd case was trained" in text


# -- your own teacher: the real MiniLM with a token classifier for the UPOS labels --------------------------

def _first_subword_states(encoder, tokenizer, sentences) -> tuple[np.ndarray, list[str]]:
    """MiniLM's last hidden state at each word's first sub-word, and the word's tag."""
    enc = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=128,
                    padding="max_length", return_tensors="np")
    hidden = np.asarray(encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state)
    states, tags = [], []
    for i, sentence in enumerate(sentences):
        seen = set()
        for position, word in enumerate(enc.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                states.append(hidden[i, position])
                tags.append(sentence.tags[word])
    return np.stack(states), tags


@pytest.fixture(scope="module")
def own_checkpoint(tiny, tmp_path_factory):
    """all-MiniLM-L6-v2 + a nearest-class-mean classifier over the 17 UPOS labels, in HF names, labels shuffled.

    ``classifier.weight`` row r scores label ``id2label[r]``: w = mean state of the label's train words,
    b = -|w|^2 / 2 (labels the train split lacks never win)."""
    root, _, _ = tiny
    out = tmp_path_factory.mktemp("own_teacher")
    model_dir = hub.resolve_model_dir(MINILM)
    tensors, _, _ = hub.read_checkpoint(model_dir)
    encoder, _ = hub.load_encoder(MINILM)
    states, tags = _first_subword_states(encoder, load_tokenizer(MINILM), read_conllu(root / "train.conllu"))
    order = [UPOS_LABELS[i] for i in np.random.default_rng(0).permutation(len(UPOS_LABELS))]
    weight = np.zeros((len(order), states.shape[1]), np.float32)
    bias = np.full(len(order), -1e3, np.float32)
    for r, label in enumerate(order):
        chosen = states[[t == label for t in tags]]
        if len(chosen):
            weight[r] = chosen.mean(0)
            bias[r] = -0.5 * float(weight[r] @ weight[r])
    named = {f"bert.{name}": np.asarray(tensors[name]) for name in tensors}
    save_file({**named, "classifier.weight": weight, "classifier.bias": bias}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config.update(architectures=["BertForTokenClassification"], id2label={str(i): l for i, l in enumerate(order)},
                  label2id={l: i for i, l in enumerate(order)})
    (out / "config.json").write_text(json.dumps(config))
    for name in hub.TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    return out, order, weight, bias


def _majority_dev(root: Path) -> float:
    train = Counter(t for s in read_conllu(root / "train.conllu") for t in s.tags)
    label = train.most_common(1)[0][0]
    dev = [t for s in read_conllu(root / "dev.conllu") for t in s.tags]
    return sum(t == label for t in dev) / len(dev)


def test_own_teacher_is_used_as_it_is_with_its_head_in_the_datas_label_order(tiny, own_checkpoint, tmp_path,
                                                                             monkeypatch):
    root, overrides, _ = tiny
    checkpoint, order, weight, bias = own_checkpoint
    trained = _FitLog(monkeypatch)
    cfg = load_config(None, [*overrides, f"teacher={checkpoint}", "teacher_finetuned=true", 'cases=["probe"]'])
    results = pipeline.run(cfg, tmp_path / "run")
    assert trained.names == ["student_probe"]  # no stage 0, no head training
    teacher = results["rows"][0]
    assert teacher["name"] == "teacher" and teacher["steps"] == 0 and teacher["stopped"] == "given"
    assert teacher["params"]["trainable"] == 0
    assert teacher["dev"] > _majority_dev(root) + 0.2  # the kept head works, in the right label order
    saved = load_file(str(tmp_path / "run" / "models" / "teacher" / "head.safetensors"))
    labels = json.loads((tmp_path / "run" / "models" / "teacher" / "alad.json").read_text())["labels"]
    assert labels == list(UPOS_LABELS)
    for j, label in enumerate(labels):
        r = order.index(label)
        np.testing.assert_array_equal(saved["classifier.weight"][j], weight[r])
        assert saved["classifier.bias"][j] == bias[r]
    assert any("used as it is (its own classifier over 17 labels, rows put in the data's label order)" in n
               for n in results["notes"])


def test_own_teacher_labels_that_differ_from_the_data_are_one_line_naming_them(tiny, own_checkpoint, tmp_path):
    _, overrides, _ = tiny
    checkpoint, order, _, _ = own_checkpoint
    renamed = tmp_path / "renamed"
    shutil.copytree(checkpoint, renamed, copy_function=os.link)
    config = json.loads((checkpoint / "config.json").read_text())
    config["id2label"][str(order.index("PUNCT"))] = "PUNCTUATION"
    (renamed / "config.json").unlink()
    (renamed / "config.json").write_text(json.dumps(config))
    cfg = load_config(None, [*overrides, f"teacher={renamed}", "teacher_finetuned=true"])
    assert own_teacher.teacher_case(cfg).head == "given"
    with pytest.raises(AladError) as error:
        own_teacher.load_head(cfg, UPOS_LABELS, {"NOUN", "PUNCT"}, 384)
    message = str(error.value)
    assert "\n" not in message
    assert "missing PUNCT (in the data, not in the teacher's head)" in message
    assert "extra PUNCTUATION (in the teacher's head, not in the data's labels)" in message
    assert 'teacher_classifier = "train"' in message


def test_keeping_a_head_the_checkpoint_lacks_is_refused(tiny):
    root, overrides, _ = tiny
    cfg = load_config(None, [*overrides, "teacher_finetuned=true", "teacher_classifier=keep"])
    with pytest.raises(AladError, match=r"has no classifier.weight / classifier.bias; set teacher_classifier = \"train\""):
        own_teacher.teacher_case(cfg)
    assert own_teacher.teacher_case(load_config(None, [*overrides, "teacher_finetuned=true"])) is cases.TEACHER_HEAD
