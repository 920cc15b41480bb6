"""The dev-tuned QA null threshold: every value survives alad.json, and a saved model obeys it.

The threshold is ``-inf`` when answering nothing is best on dev, finite when
some answers help, and ``+inf`` means "always answer". JSON has no
infinities, so they are written as the strings "-Infinity" / "Infinity".
The model-level tests follow the pipeline's own path: ``QATask.evaluate``
tunes the threshold, its ``null_threshold`` score goes into the saved model's
meta (as ``train/pipeline.py`` does), and ``QAPredictor`` must then give the
answers the task scored.
"""

import json
import math

import pytest
from flax import nnx

from alad_jax.adapter import AlignmentAdapter
from alad_train.batches import bucketed
from alad_train.config import load_config
from alad_jax.data import qa
from alad_jax.data.readers import Answer, QAExample
from alad_jax.errors import AladError
from alad_jax.inference import save_aligned_model
from alad_jax.inference.predictor import QAPredictor
from alad_jax.metrics import squad_v2_scores
from alad_jax.models import EncoderConfig, QAHead, build_encoder, hub
from alad_train import tasks
from alad_jax.models.task_model import TaskModel

MAX_LENGTH, STRIDE = 64, 16
CONTEXTS = [
    "The mill on the river was built in 1887 by a family of weavers who came from the north.",
    "Ferries crossed the estuary until the bridge opened; the last ferryman kept the bell.",
    "Bees dance to tell the hive how far away the flowers are, and in which direction to fly. " * 3,
    "The observatory opened in 1911 and its telescope has a lens twelve inches wide.",
    "Salt was made by letting the tide fill clay pans and the sun dry them.",
    "Glaciers leave curved ridges of gravel called moraines where their snouts once stood.",
]
QUESTIONS = ["When was the mill built?", "What did the ferryman keep?", "What does the dance tell?",
             "How wide is the lens?", "How was salt made?", "What are moraines?"]


@pytest.mark.parametrize("threshold", [-math.inf, -3.75, 0.0, 0.1, 2.0 / 3.0, 1e300, math.inf])
def test_null_threshold_survives_strict_json_exactly(threshold):
    text = json.dumps({"null_threshold": qa.threshold_to_json(threshold)}, allow_nan=False)
    back = qa.threshold_from_json(json.loads(text)["null_threshold"], "alad.json")
    assert back == threshold and math.copysign(1.0, back) == math.copysign(1.0, threshold)


@pytest.mark.parametrize("value", [None, "inf", "nan", True, float("nan"), [1.0]])
def test_unreadable_null_threshold_is_one_clear_error(value):
    with pytest.raises(AladError, match=r"alad.json: null_threshold is .*expected a number"):
        qa.threshold_from_json(value, "alad.json")


def test_nan_threshold_is_refused_when_written():
    with pytest.raises(AladError, match="NaN"):
        qa.threshold_to_json(math.nan)


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def model():
    """Random BERT (hidden 16) -> AlAd K=3 (to 24) -> QA head: its spans are arbitrary but fixed."""
    rngs = nnx.Rngs(3)
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=MAX_LENGTH)
    return TaskModel(build_encoder(config, rngs=rngs), QAHead(24, rngs=rngs), AlignmentAdapter(16, 24, 3, 32, rngs=rngs))


def _task(tokenizer, examples) -> tasks.QATask:
    """The pipeline's QA task over ``examples``, which serve as dev and test (as in the tiny QA config)."""
    cfg = load_config(None, ["task=qa", f"max_length={MAX_LENGTH}", f"stride={STRIDE}", "eval_batch_size=8"])
    features = qa.encode_qa(examples, tokenizer, max_length=MAX_LENGTH, doc_stride=STRIDE,
                            max_query_length=cfg.max_query_length)
    return tasks.QATask(cfg, tokenizer, {"dev": examples, "test": examples}, {"dev": features, "test": features}, [])


def _unanswerable() -> list[QAExample]:
    return [QAExample(f"q{i}", q, c, ()) for i, (q, c) in enumerate(zip(QUESTIONS, CONTEXTS))]


def _dev(kind, model, tokenizer) -> list[QAExample]:
    """'never': every question unanswerable, so answering nothing is best (threshold -inf).
    'mixed': the three questions the model is surest of get its own span as gold, the rest none,
    so the best threshold lies between them (finite)."""
    examples = _unanswerable()
    if kind == "never":
        return examples
    spans, diffs = _task(tokenizer, examples)._answers(model, "dev")
    surest = sorted(diffs, key=diffs.get)[:3]
    return [QAExample(e.id, e.question, e.context, (Answer(spans[e.id], e.context.index(spans[e.id])),))
            if e.id in surest else e for e in examples]


def _save(model, tokenizer, path, threshold_json):
    return save_aligned_model(path, encoder=model.encoder, adapter=model.adapter, head=model.head, labels=(),
                              task="qa", max_length=MAX_LENGTH, tokenizer=tokenizer, stride=STRIDE,
                              meta={"null_threshold": threshold_json})


@pytest.mark.parametrize("kind", ["never", "mixed"])
def test_saved_qa_model_answers_as_the_task_scored(kind, model, tokenizer, tmp_path):
    examples = _dev(kind, model, tokenizer)
    task = _task(tokenizer, examples)
    _, scores = task.evaluate(model, "test", bucketed(task.cfg))  # QA batches question windows as they are
    spans, diffs = task._answers(model, "test")
    threshold = qa.best_null_threshold(examples, diffs, spans)
    scored = qa.apply_null_threshold(spans, diffs, threshold)
    assert math.isinf(threshold) == (kind == "never")

    path = _save(model, tokenizer, tmp_path / "alad_w3_frozen", scores["null_threshold"])  # as the pipeline does
    predictor = QAPredictor.from_dir(path)
    assert predictor.null_threshold == threshold
    answers = predictor.answer([e.question for e in examples], [e.context for e in examples])
    assert answers == [scored[e.id] for e in examples]
    assert squad_v2_scores(examples, dict(zip(scored, answers)))["f1"] == scores["f1"]
    if kind == "never":
        assert answers == [""] * len(examples) and scores["f1"] == 100.0
    else:  # both kinds of answer occur
        assert "" in answers and any(answers)


def test_saved_infinite_threshold_always_answers(model, tokenizer, tmp_path):
    path = _save(model, tokenizer, tmp_path / "m", qa.threshold_to_json(math.inf))
    answers = QAPredictor.from_dir(path).answer(QUESTIONS, CONTEXTS)
    assert all(answer and answer in context for answer, context in zip(answers, CONTEXTS))


def test_ambiguous_saved_threshold_is_refused(model, tokenizer, tmp_path):
    path = _save(model, tokenizer, tmp_path / "old", None)  # what older versions wrote for -inf and +inf alike
    with pytest.raises(AladError, match="alad.json: meta: null_threshold is None"):
        QAPredictor.from_dir(path)
