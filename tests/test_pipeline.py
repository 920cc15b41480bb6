"""End to end: `alad run` on tiny random encoders and real Porttinari sentences.

Proves the work directory answers the contract (results.json rows and keys,
results.md, plots, TensorBoard scalars, exported reference-layout adapters,
no checkpoints of finished stages), that training learns (dev accuracy above the majority
label, falling loss), and that a run killed with SIGKILL (while the feature
cache is written, inside an alignment stage, inside stage-3 fine-tuning) and
started again continues each stage after its last checkpoint and ends with the
same results.
"""

import json
import shutil
import time
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from alad_train.config import load_config
from alad_jax.data.readers import read_conllu
from alad_train import cases, pipeline, predictions
from alad_train.context import Progress
from alad_train.report import statistics
import tiny_inputs  # tests/helpers, on the path through tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT.parent / "shared" / "check_results.py"
# Enough training for tiny random encoders to learn (frozen-student cases train on cached features:
# their extra epochs cost seconds); the encoder-training rows stay short, they are compile-bound.
EPOCHS = {"teacher": 3, "align": 2, "continual": 2, "probe": 8, "head": 8, "frozen": 8, "joint": 1, "student_ft": 1}
LR = {"teacher": 1e-3, "align": 1e-3, "continual": 1e-3, "probe": 1e-2, "head": 1e-2, "frozen": 3e-3, "joint": 1e-3,
      "student_ft": 1e-3}
CHECKPOINT_EVERY = 8
WORKER = ROOT / "tests" / "helpers" / "pipeline_worker.py"
ROWS = ["teacher", "student_probe", "student_ft", "alad_w3_head", "alad_w3_frozen", "alad_w3_joint",
        "alad_w3_noalign_frozen"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, xla_cache):
    """Tiny random teacher (H48) and student (H32) with the real MiniLM tokenizer, real UD sentences."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_inputs.write_encoders(root, {"teacher": (48, 2), "student": (32, 1)}, max_positions=128)
    tiny_inputs.write_ud_splits(root, {"train": (0, 64), "dev": (64, 80), "test": (80, 96)}, corpus=(0, 48))
    overrides = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0",
        f"data.train={root / 'train.conllu'}", f"data.dev={root / 'dev.conllu'}", f"data.test={root / 'test.conllu'}",
        "data.max_train=0", "data.max_dev=0", "data.max_test=0",
        f'corpus.paths=["{root / "corpus.conllu"}"]', "corpus.max_sentences=36", "corpus.val_sentences=12",
        "adapter_hidden=64", "max_length=64", "eval_batch_size=16", "latency_batches=2",
        f"checkpoint_every={CHECKPOINT_EVERY}", "stages.align.token_budget=512", "stages.continual.token_budget=512",
    ] + [f"stages.{s}.batch_size=16" for s in ("teacher", "head", "frozen", "joint", "probe", "student_ft")] \
      + [f"stages.{s}.epochs={n}" for s, n in EPOCHS.items()] + [f"stages.{s}.lr={lr}" for s, lr in LR.items()]
    return root, overrides, dict(xla_cache)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    _, overrides, _ = tiny
    workdir = tmp_path_factory.mktemp("run")
    results = pipeline.run(load_config(None, overrides), workdir)
    return workdir, results


def _alad(*args):
    return [sys.executable, "-m", "alad_train.cli", *args]


def test_results_json_meets_the_contract(finished):
    workdir, results = finished
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["task"] == "pos" and on_disk["metric"] == "accuracy"
    assert [r["name"] for r in on_disk["rows"]] == ROWS
    assert on_disk["xla_cpu"]["matmul_dtype"] == "bfloat16" and "bf16_matrix_instructions" in on_disk["xla_cpu"]
    for row in on_disk["rows"]:
        assert set(row) >= {"name", "dev", "test", "params", "latency_ms", "cosine"}
        assert 0.0 <= row["dev"] <= 1.0 and 0.0 <= row["test"] <= 1.0
        assert set(row["params"]) >= {"total", "trainable", "adapter"}
        assert row["latency_ms"] > 0
        assert (row["cosine"] is not None) == row["name"].startswith("alad_")
    if CHECKER.is_file():
        check = subprocess.run([sys.executable, str(CHECKER), str(workdir)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_saved_predictions_reproduce_every_row_score(finished):
    """Each row's dev and test files, scored again, give exactly the row's numbers (one code path)."""
    workdir, results = finished
    for row in results["rows"]:
        for split, sentences in (("dev", 16), ("test", 16)):
            header, records = predictions.read(predictions.path(workdir, row["name"], split))
            assert len(records) == sentences and all(len(r["gold"]) == len(r["pred"]) == len(r["words"])
                                                     for r in records)
            assert predictions.score_records("pos", records)["accuracy"] == header["score"] == row[split], row["name"]


def test_results_carry_paired_intervals_for_every_comparison(finished):
    workdir, results = finished
    on_disk = json.loads((workdir / "results.json").read_text())
    test = {r["name"]: r["test"] for r in on_disk["rows"]}
    pairs = [(c["a"], c["b"]) for c in on_disk["comparisons"]]
    assert pairs == [("alad_w3_frozen", "student_probe"), ("alad_w3_frozen", "alad_w3_noalign_frozen"),
                     ("alad_w3_joint", "student_ft")]
    for c in on_disk["comparisons"]:
        assert c["diff"] == pytest.approx(test[c["a"]] - test[c["b"]])
        assert c["ci_low"] <= c["diff"] <= c["ci_high"] and c["unit"] == "sentences" and c["resamples"] == 10_000
        assert c["verdict"] == ("better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else
                                "no detectable difference")
    assert on_disk == {**on_disk, **statistics.run_intervals(
        workdir, "pos", [cases.RowId.of_record(r) for r in on_disk["rows"]])}  # seeded: reproducible
    assert {g["row"] for g in on_disk["gap_recovered"]} == set(ROWS) - {"teacher", "student_probe"}
    assert "paired bootstrap 95% interval" in (workdir / "results.md").read_text()


def test_parameter_accounting_is_exact(finished):
    _, results = finished
    rows = {r["name"]: r for r in results["rows"]}
    adapter = 3 * 32 * 64 + 64 + 64 * 48 + 48  # fc1 (K*Ds -> 64) + fc2 (64 -> Dt)
    assert rows["alad_w3_frozen"]["params"]["adapter"] == adapter
    assert rows["student_probe"]["params"]["adapter"] == 0
    head = rows["alad_w3_head"]["params"]["trainable"]
    assert head % 49 == 0  # a 48 -> labels linear layer: (48 + 1) * labels
    assert rows["alad_w3_frozen"]["params"]["trainable"] == adapter + head
    assert rows["alad_w3_joint"]["params"]["trainable"] == rows["alad_w3_joint"]["params"]["total"]
    assert rows["alad_w3_frozen"]["params"]["total"] == rows["alad_w3_joint"]["params"]["total"]


def test_alignment_training_reduces_the_loss(finished):
    workdir, results = finished
    progress = json.loads((workdir / "progress.json").read_text())
    for stage in ("align_w3", "continual_w3"):
        history = progress[stage]["history"]
        assert len(history) == 2
        assert history[1]["mse"] < history[0]["mse"]
    assert results["alignment"]["w3"]["stage2"]["cosine"] > 0.0


def _majority_baseline(root: Path) -> float:
    """Dev accuracy of always predicting the most frequent train label."""
    train = Counter(tag for s in read_conllu(root / "train.conllu") for tag in s.tags)
    label = train.most_common(1)[0][0]
    dev = [tag for s in read_conllu(root / "dev.conllu") for tag in s.tags]
    return sum(tag == label for tag in dev) / len(dev)


def test_adapter_and_probe_learn_the_task(tiny, finished):
    """The tiny run is trained long enough to learn: dev accuracy well above the majority label, falling loss."""
    root, _, _ = tiny
    workdir, results = finished
    majority = _majority_baseline(root)
    assert 0.1 < majority < 0.4  # NOUN on Porttinari
    rows = {r["name"]: r for r in results["rows"]}
    progress = json.loads((workdir / "progress.json").read_text())
    for name in ("student_probe", "alad_w3_frozen"):
        assert rows[name]["dev"] > majority + 0.1, (name, rows[name]["dev"], majority)
        assert rows[name]["test"] > majority
        losses = [epoch["train_loss"] for epoch in progress[name]["history"]]
        assert 0 < losses[-1] < 0.85 * losses[0], (name, losses)


def test_work_directory_holds_every_output(finished):
    workdir, _ = finished
    text = (workdir / "results.md").read_text()
    for name in ROWS:
        assert name in text
    for png in ("alignment.png", "metric_by_row.png"):
        assert (workdir / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(workdir / "config.toml").windows == [3]
    tensors = load_file(str(workdir / "adapters" / "w3_continual.safetensors"))
    assert tensors["fc1.weight"].shape == (64, 3 * 32) and tensors["fc2.weight"].shape == (48, 64)
    assert not list((workdir / "checkpoints").iterdir())  # a finished stage's checkpoints go (keep_checkpoints)


def _comparable(results):
    keep = ("name", "dev", "test", "params", "cosine", "dev_metrics", "test_metrics", "steps")
    return [{k: r[k] for k in keep} for r in results["rows"]]


def _latest_checkpoint(directory: Path) -> int:
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    return max(steps, default=0)


def _steps_logged(log: Path) -> dict[str, list[int]]:
    """stage -> steps its last finished fit() call ran, from a pipeline_worker log."""
    lines = log.read_text().splitlines() if log.is_file() else []
    return {entry["stage"]: entry["steps"] for entry in map(json.loads, lines)}


def test_run_killed_in_cache_alignment_and_fine_tuning_resumes_each_where_it_stopped(tiny, finished, tmp_path):
    """SIGKILL three times (while the feature cache is written, inside stage 1, inside stage-3 fine-tuning),
    then run to the end: each killed stage continues after its last checkpoint, and the results equal an
    uninterrupted run's."""
    _, overrides, env = tiny
    reference_dir, reference = finished
    total = {name: out["steps"] for name, out in json.loads((reference_dir / "progress.json").read_text()).items()
             if "steps" in out}  # training stages (not the final latency measurement)
    workdir, log = tmp_path / "killed", tmp_path / "steps.jsonl"

    def run(kill: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(WORKER), str(log), kill, "run", "--workdir", str(workdir),
                               *overrides], capture_output=True, text=True, env=env, timeout=600)

    out = run("cache")
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    half_written = [p for p in (workdir / "cache").iterdir() if ".tmp" in p.name]  # <key>.tmp-<host>-<pid>
    assert len(half_written) == 1 and not (half_written[0] / "done.json").exists()

    # Killed in stage 1 after its first mid-stage checkpoint (one more step computed, not saved).
    align_kill = CHECKPOINT_EVERY + 1
    assert total["align_w3"] > align_kill
    out = run(f"align_w3:{align_kill}")
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    align_saved = _latest_checkpoint(workdir / "checkpoints" / "align_w3")
    assert align_saved == CHECKPOINT_EVERY

    frozen_kill = total["alad_w3_frozen"] - 3
    out = run(f"alad_w3_frozen:{frozen_kill}")
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    frozen_saved = _latest_checkpoint(workdir / "checkpoints" / "alad_w3_frozen")
    assert 0 < frozen_saved < frozen_kill
    assert _steps_logged(log)["align_w3"] == list(range(align_saved + 1, total["align_w3"] + 1))

    shutil.rmtree(workdir / "cache")  # what README offers to free disk: recomputed when needed
    out = run("none")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _steps_logged(log)["alad_w3_frozen"] == list(range(frozen_saved + 1, total["alad_w3_frozen"] + 1))
    assert not [p for p in (workdir / "cache").iterdir() if ".tmp" in p.name]
    resumed = json.loads((workdir / "results.json").read_text())
    assert _comparable(resumed) == _comparable(reference)
    # The resumed stage's total counts the interrupted session's training too.
    align = json.loads((workdir / "progress.json").read_text())["align_w3"]
    assert align["wall_seconds"] >= align["train_seconds"] > 0


def test_seeds_run_in_their_own_directories_and_resume_after_a_kill_in_seed_2(tiny, finished, tmp_path):
    """``--seeds 0,1,2``: seed 0's run is the one-seed run (its finished work directory is reused as is), seed 1
    runs, a SIGKILL inside seed 2's stage 1 stops everything; run again: seeds 0 and 1 train nothing, seed 2
    continues after its checkpoint, and results.json holds mean and std per row and intervals across seeds."""
    _, overrides, env = tiny
    workdir, log = tmp_path / "seeds", tmp_path / "steps.jsonl"
    workdir.mkdir()
    shutil.copytree(finished[0], workdir / "seed_0")

    def run(kill: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(WORKER), str(log), kill, "run", "--workdir", str(workdir),
                               "--seeds", "0,1,2", *overrides], capture_output=True, text=True, env=env, timeout=1800)

    out = run(f"seed_2/align_w3:{CHECKPOINT_EVERY + 1}")
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert {json.loads(line)["run"] for line in log.read_text().splitlines()} == {"seed_1", "seed_2"}
    assert (workdir / "seed_1" / "results.json").is_file() and not (workdir / "seed_2" / "results.json").exists()
    assert _latest_checkpoint(workdir / "seed_2" / "checkpoints" / "align_w3") == CHECKPOINT_EVERY
    log.unlink()

    out = run("none")
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert {entry["run"] for entry in resumed} == {"seed_2"}
    assert resumed[0]["stage"] == "align_w3" and resumed[0]["steps"][0] == CHECKPOINT_EVERY + 1

    results = json.loads((workdir / "results.json").read_text())
    per_seed = {s: {r["name"]: r for r in json.loads((workdir / f"seed_{s}" / "results.json").read_text())["rows"]}
                for s in (0, 1, 2)}
    assert results["seeds"] == [0, 1, 2] and [r["name"] for r in results["rows"]] == ROWS
    assert len({json.dumps(per_seed[s]["alad_w3_frozen"]["history"]) for s in (0, 1, 2)}) == 3  # seeds differ
    for row in results["rows"]:
        for split in ("dev", "test"):
            values = [per_seed[s][row["name"]][split] for s in (0, 1, 2)]
            assert row[split] == pytest.approx(np.mean(values))
            assert row[f"{split}_std"] == pytest.approx(np.std(values, ddof=1))
        assert [p["seed"] for p in row["per_seed"]] == [0, 1, 2]
    for c in results["comparisons"]:
        assert c["seeds"] == [0, 1, 2] and c["unit"] == "seeds x sentences" and c["ci_low"] <= c["ci_high"]
        assert c["diff"] == pytest.approx(np.mean([per_seed[s][c["a"]]["test"] - per_seed[s][c["b"]]["test"]
                                                   for s in (0, 1, 2)]))
    assert sorted({c["seed"] for c in results["seed_comparisons"]}) == [0, 1, 2]
    assert len(results["seed_comparisons"]) == 9
    assert "### Per seed" in (workdir / "results.md").read_text()
    if CHECKER.is_file():
        check = subprocess.run([sys.executable, str(CHECKER), str(workdir)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_bad_input_is_one_clear_line(tiny, tmp_path):
    _, overrides, env = tiny
    missing = tmp_path / "missing.conllu"
    out = subprocess.run(_alad("run", "--workdir", str(tmp_path / "w"), *overrides, f"data.train={missing}"),
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "missing.conllu" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(_alad("run", "--workdir", str(tmp_path / "w"), "stages.algn.lr=1"), capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "stages.algn.lr" in out.stderr and "stages.align" in out.stderr


def test_malformed_data_line_names_file_and_line(tiny, tmp_path):
    root, overrides, env = tiny
    bad = tmp_path / "bad.conllu"
    lines = (root / "train.conllu").read_text().splitlines()
    lines[5] = "3\tonly-two-columns"
    bad.write_text("\n".join(lines) + "\n")
    out = subprocess.run(_alad("run", "--workdir", str(tmp_path / "w"), *overrides, f"data.train={bad}"),
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "bad.conllu:6" in out.stderr and "Traceback" not in out.stderr


def test_changed_config_in_existing_workdir_is_refused(finished, tiny):
    workdir, _ = finished
    _, overrides, env = tiny
    out = subprocess.run(_alad("run", "--workdir", str(workdir), *overrides, "seed=5"), capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "different config" in out.stderr
    assert json.loads((workdir / "results.json").read_text())["rows"]  # nothing already written was lost


def test_a_resumed_stage_total_counts_the_interrupted_sessions_training(tmp_path):
    """5 s trained before a kill + 0.2 s after: the stage took at least 5.2 s, not this session's 0.2 s."""
    cfg = load_config(None, [])
    progress = Progress(pipeline.prepare_workdir(tmp_path / "run", cfg), keep_checkpoints=False)

    def resumed_training():
        time.sleep(0.2)
        return {"steps": 10, "train_seconds": 5.2, "resumed_seconds": 5.0}

    record = progress.record("teacher", resumed_training)
    assert record["wall_seconds"] >= record["train_seconds"] == 5.2
    assert "resumed_seconds" not in record
