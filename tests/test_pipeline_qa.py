"""Extractive QA through the same pipeline: tiny random encoders on a learnable SQuAD v2-format task.

The hand-written files in data/squad_v2_tiny (36 varied questions) are too few
for a random tiny encoder to learn from, so a test there cannot tell learning
from not learning. Here the questions come from templates ("When was the mill
at Penlow built?"): the answer is the one year in the context (a single word
piece from a small pool), and a third of the contexts hold no year and the
question is unanswerable. A frozen random encoder with a per-token adapter can
learn that, so a broken loss, span decoder or null threshold shows as a score
no better than answering nothing. Contexts are long enough to need a stride.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from alad_train.config import load_config
from alad_jax.data import qa
from alad_jax.inference import load_aligned_model
from alad_jax.inference.predictor import QAPredictor
from alad_train.cases import model_dir as model_dir_of_workdir
from alad_jax.metrics import squad_v2_scores
from alad_jax.models.config import EncoderConfig
from alad_jax.models.hub import load_tokenizer, save_encoder
from alad_jax.models.modeling import build_encoder
from alad_train import pipeline, tasks

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["teacher", "student_probe", "student_ft", "alad_w1_head", "alad_w1_frozen", "alad_w1_joint",
        "alad_w1_noalign_frozen"]
THINGS = ("mill", "bridge", "chapel", "lighthouse", "school", "tower", "market hall", "harbour wall")
PLACES = ("Kelmoor", "Penlow", "Hesk", "Ferrow", "Brightwater", "Carrow", "Tarn", "Skarn")
YEARS = (1851, 1862, 1874, 1887, 1893, 1898)  # each one word piece of the MiniLM vocabulary
FILLER = (
    "The town lies at the mouth of a slow river between two low hills.",
    "Fishing boats still leave the harbour before dawn on most days of the week.",
    "Visitors come in summer to walk along the cliffs and watch the seabirds.",
    "A weekly market fills the square with stalls of bread, cheese and wool.",
    "The old road to the north crosses a moor where sheep graze all year.",
    "Most of the houses are built from grey stone quarried in the valley.",
    "A brass band practises in the hall and plays at every festival.",
    "The parish records were kept by the same family for many generations.",
    "In winter the storms can close the road for several days at a time.",
    "Children from the farms around the town walk to the school each morning.",
    "The museum shows tools, nets and photographs from the fishing trade.",
    "A ferry once carried carts and passengers across the wide estuary.",
)


def _squad(count: int, seed: int) -> dict:
    """``count`` template questions, one per paragraph, every third unanswerable (no year in the context)."""
    rng = np.random.default_rng(seed)
    paragraphs = []
    for i in range(count):
        thing, place = THINGS[rng.integers(len(THINGS))], PLACES[rng.integers(len(PLACES))]
        year = int(YEARS[rng.integers(len(YEARS))])
        answerable = i % 3 != 0
        fact = f"The {thing} at {place} was built in {year}." if answerable else f"The {thing} at {place} still stands."
        sentences = [FILLER[j] for j in rng.permutation(len(FILLER))[: rng.integers(2, 9)]]
        sentences.insert(int(rng.integers(len(sentences) + 1)), fact)
        context = " ".join(sentences)
        answers = [{"text": str(year), "answer_start": context.index(str(year))}] if answerable else []
        paragraphs.append({"context": context, "qas": [{"id": f"q{seed}-{i}", "question": f"When was the {thing} at "
                                                        f"{place} built?", "answers": answers,
                                                        "is_impossible": not answerable}]})
    return {"version": "v2.0", "data": [{"title": "towns", "paragraphs": paragraphs}]}


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    root = tmp_path_factory.mktemp("tiny_qa")
    tokenizer = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    for name, hidden in (("teacher", 48), ("student", 32)):
        config = EncoderConfig(model_type="bert", vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_layers=1,
                               num_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
        save_encoder(build_encoder(config, rngs=nnx.Rngs(2)), root / name, tokenizer=tokenizer)
    (root / "train.json").write_text(json.dumps(_squad(48, seed=0)))
    (root / "dev.json").write_text(json.dumps(_squad(18, seed=1)))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(FILLER * 2) + "\n")
    overrides = [
        f"teacher={root / 'teacher'}", f"student={root / 'student'}", "student_layers=0", "windows=[1]",
        f"data.train={root / 'train.json'}", f"data.dev={root / 'dev.json'}", f"data.test={root / 'dev.json'}",
        "corpus.format=text", f'corpus.paths=["{corpus}"]', "corpus.max_sentences=16", "corpus.val_sentences=8",
        "adapter_hidden=32", "max_length=128", "stride=32", "max_query_length=32", "eval_batch_size=8",
        "latency_batches=1", "stages.align.epochs=1", "stages.continual.epochs=1",
    ] + [f"stages.{s}.epochs=1" for s in ("teacher", "joint", "student_ft")] \
      + [f"stages.{s}.epochs=16" for s in ("head", "frozen", "probe")] \
      + ["stages.probe.lr=3e-2", "stages.head.lr=3e-2", "stages.frozen.lr=1e-2"]
    cfg = load_config(ROOT / "configs" / "qa_squad_v2_tiny.toml", overrides)
    workdir = tmp_path_factory.mktemp("qa_run")
    results = pipeline.run(cfg, workdir)
    yield workdir, results, cfg, tokenizer
    jax.config.update("jax_compilation_cache_dir", None)


def test_qa_rows_carry_f1_and_exact(qa_run):
    workdir, results, _, _ = qa_run
    assert results["task"] == "qa" and results["metric"] == "f1" and results["metric_scale"] == 100
    assert [r["name"] for r in results["rows"]] == ROWS
    for row in results["rows"]:
        for split in ("dev", "test"):
            scores = row[f"{split}_metrics"]
            assert row[split] == {"f1": scores["f1"], "exact": scores["exact"]}
            assert 0.0 <= scores["exact"] <= scores["f1"] <= 100.0
            assert scores["HasAns_total"] + scores["NoAns_total"] == scores["total"] == 18
    on_disk = json.loads((workdir / "results.json").read_text(), parse_constant=_refuse)  # strict JSON
    assert [r["name"] for r in on_disk["rows"]] == ROWS


def _refuse(name):
    raise AssertionError(f"results.json holds {name}, which is not JSON")


def test_qa_probe_and_adapter_learn_to_answer(qa_run):
    """Loss falls, and both EM and F1 beat answering nothing (the unanswerable share) by a wide margin."""
    workdir, results, _, _ = qa_run
    progress = json.loads((workdir / "progress.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    for name in ("student_probe", "alad_w1_frozen"):
        scores = rows[name]["dev_metrics"]
        nothing = 100.0 * scores["NoAns_total"] / scores["total"]
        assert scores["exact"] > nothing + 10 and scores["f1"] > nothing + 10, (name, scores)
        losses = [epoch["train_loss"] for epoch in progress[name]["history"]]
        assert 0 < losses[-1] < 0.7 * losses[0], (name, losses)
    assert rows["alad_w1_frozen"]["dev"]["exact"] > 2 * nothing  # the adapter answers most questions


def test_qa_dev_doubling_as_test_is_stated(qa_run):
    _, results, _, _ = qa_run
    assert any("not held out" in note for note in results["notes"])
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["alad_w1_frozen"]["dev"] == rows["alad_w1_frozen"]["test"]  # same file, same tuned threshold


@pytest.mark.parametrize("case", ["frozen", "noalign_frozen"])
def test_saved_qa_model_answers_dev_as_the_pipeline_scored(qa_run, case):
    """QAPredictor on the saved model gives the answers the pipeline scored on dev, "" included."""
    workdir, results, cfg, tokenizer = qa_run
    row = {r["name"]: r for r in results["rows"]}[f"alad_w1_{case}"]
    model_dir = model_dir_of_workdir(workdir, case)
    threshold = qa.threshold_from_json(row["dev_metrics"]["null_threshold"], "results.json")
    # What the pipeline scored: the task's own decoding of this model, with the threshold tuned on dev.
    task = tasks.QATask.load(cfg, tokenizer)
    spans, diffs = task._answers(load_aligned_model(model_dir).model, "dev")
    scored = qa.apply_null_threshold(spans, diffs, threshold)
    dev = task.examples["dev"]
    assert squad_v2_scores(dev, scored)["f1"] == row["dev"]["f1"]

    predictor = QAPredictor.from_dir(model_dir)
    assert predictor.null_threshold == threshold
    answers = predictor.answer([e.question for e in dev], [e.context for e in dev])
    assert answers == [scored[e.id] for e in dev]
    assert "" in answers
    scores = squad_v2_scores(dev, {e.id: a for e, a in zip(dev, answers)})
    assert (scores["exact"], scores["f1"]) == (row["dev"]["exact"], row["dev"]["f1"])
