"""Tasks: where a stage's data, head, loss and evaluation come from.

A task turns the config's data section into token rows, batches and metrics.
The pipeline only talks to this interface, so POS, NER and QA share every
stage and case.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from alad_train.config import Config, StageConfig
from alad_jax.data import qa, readers, sources, splits, tagging
from alad_jax.errors import AladError
from alad_jax.models import task_model
from alad_jax.models.heads import QAHead, TaggingHead
from alad_train import batches
from alad_train import models
from alad_train import predictions as predictions_file
from alad_train.batches import Batching

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class TaggingTask:
    """Token tagging (POS accuracy or NER entity F1) on word-level labels."""

    cfg: Config
    tokenizer: object
    sentences: dict[str, list]
    features: dict[str, tagging.TaggingFeatures]
    vocab: tagging.LabelVocab
    notes: list[str]
    _eval_batches: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        return "accuracy" if self.cfg.task == "pos" else "f1"

    @classmethod
    def load(cls, cfg: Config, tokenizer) -> "TaggingTask":
        data = cfg.data
        notes = []
        skipped = sources.Skipped()
        train = sources.read_task_split(data, cfg.task, "train", skipped=skipped)
        if (data.dev == "hash") != (data.test == "hash"):
            raise AladError("config keys 'data.dev' and 'data.test': use 'hash' for both or give both files")
        if data.dev == "hash":
            train, dev, test = splits.split_by_hash(train, dev_every=data.hash_every, test_every=data.hash_every)
            notes.append(f"dev/test: md5-of-words split of {data.train}, 1 in {data.hash_every} each")
        else:
            dev = sources.read_task_split(data, cfg.task, "dev", skipped=skipped)
            test = sources.read_task_split(data, cfg.task, "test", skipped=skipped)
        if skipped.note():
            print(f"warning: {skipped.note()}", flush=True)
            notes.append(skipped.note())
        sentences = {}
        for split, items, limit in (("train", train, data.max_train), ("dev", dev, data.max_dev),
                                    ("test", test, data.max_test)):
            chosen = splits.subsample(items, limit or None, seed=cfg.seed)
            if len(chosen) < len(items):
                notes.append(f"{split}: subsampled to {len(chosen)} of {len(items)} sentences (seed {cfg.seed})")
            if not chosen:
                raise AladError(f"the {split} split is empty; check data.{split} and data.max_{split}")
            sentences[split] = chosen
        if cfg.task == "pos" and data.format == "conllu" and data.tag == "upos":
            vocab = tagging.LabelVocab(tagging.UPOS_LABELS)  # every UD corpus shares these 17 ids
        else:
            # Every split's tags get an id, so a tag that training never saw is scored as an
            # error the model cannot avoid rather than stopping the run.
            vocab = tagging.LabelVocab.from_sentences([s for items in sentences.values() for s in items])
        unseen = sorted({t for s in sentences["dev"] + sentences["test"] for t in s.tags or ()}
                        - {t for s in sentences["train"] for t in s.tags or ()})
        if unseen:
            message = (f"labels {', '.join(unseen)} occur in dev/test but never in train: "
                       f"every word with them is scored as an error")
            print(f"warning: {message}", flush=True)
            notes.append(message)
        features = {}
        for split, items in sentences.items():
            features[split] = tagging.encode_tagging(items, tokenizer, vocab, max_length=cfg.max_length,
                                                     stride=cfg.stride)
            if features[split].num_truncated_words:
                notes.append(f"{split}: {features[split].num_truncated_words} words got no sub-word and no prediction")
        return cls(cfg, tokenizer, sentences, features, vocab, notes)

    def make_head(self, in_features: int, seed: int) -> nnx.Module:
        return TaggingHead(in_features, len(self.vocab.labels), self.cfg.head_dropout, rngs=nnx.Rngs(seed))

    loss_fn = staticmethod(models.tagging_loss)

    def train_batches(self, stage: StageConfig, epoch: int, strategy: Batching) -> list[Batch]:
        """An epoch's batches of sentences (``stage.batch_size`` of them), as ``strategy`` makes them."""
        return strategy.train(self.features["train"], stage, epoch, by_tokens=False)

    def eval_batches(self, split: str, strategy: Batching) -> list[Batch]:
        """A split's batches for evaluation, as ``strategy`` makes them (made once per split and strategy)."""
        key = (split, strategy)
        if key not in self._eval_batches:
            self._eval_batches[key] = strategy.eval(self.features[split])
        return self._eval_batches[key]

    def text_rows(self, split: str) -> tagging.TaggingFeatures:
        """The split's token rows, labels dropped (what continual alignment reads)."""
        return self.features[split]

    def predict(self, model: nnx.Module, split: str, strategy: Batching, prepare=None) -> tuple[list[dict], dict]:
        """Per sentence of a split: its words, gold and predicted labels (:mod:`alad_train.predictions`),
        and ``{}`` (no prediction-wide settings). What :meth:`evaluate` scores.

        ``strategy``: the batching chosen for the model's case (:func:`alad_train.batches.for_finetune`);
        ``prepare(batch)`` may add cached arrays (e.g. a frozen encoder's output) to each batch.
        """
        graphdef, state = nnx.split(model)
        feats = self.features[split]
        split_batches = self.eval_batches(split, strategy)
        outputs = [np.asarray(task_model.predict_tags(graphdef, state, prepare(batch) if prepare else batch))
                   for batch in split_batches]
        predictions = strategy.rows(split_batches, outputs, len(feats.input_ids))
        words = tagging.stitch_predictions(feats, predictions)
        labels = self.vocab.labels
        return [{"words": list(s.words), "gold": list(s.tags), "pred": [labels[i] for i in sent]}
                for s, sent in zip(self.sentences[split], words)], {}

    def evaluate(self, model: nnx.Module, split: str, strategy: Batching, prepare=None) -> tuple[float, dict]:
        """Word-level metric of ``model`` on a split: (headline score, all metrics)."""
        return self.score(*self.predict(model, split, strategy, prepare))

    def score(self, records: list[dict], meta: dict) -> tuple[float, dict]:
        """(headline, all metrics) of :meth:`predict`'s output, by the scorer that reads saved predictions."""
        metrics = predictions_file.score_records(self.cfg.task, records)
        return float(metrics[self.metric]), {**metrics, **meta}


def alignment_batches(features, cfg: Config, stage: StageConfig, epoch: int) -> list[Batch]:
    """Bucketed alignment batches of ``stage``: what ``alad bench`` and the benchmarks time (the run's stages take
    their strategy from :func:`alad_train.batches.for_alignment`)."""
    return batches.bucketed(cfg).train(features, stage, epoch, by_tokens=True)


def rows_of(features) -> Sequence[np.ndarray]:
    return features.input_ids


@dataclasses.dataclass
class QATask:
    """Extractive QA (SQuAD 2.0): exact match and F1 in percent, null threshold tuned on dev."""

    cfg: Config
    tokenizer: object
    examples: dict[str, list[readers.QAExample]]
    features: dict[str, qa.QAFeatures]
    notes: list[str]
    metric = "f1"

    @classmethod
    def load(cls, cfg: Config, tokenizer) -> "QATask":
        data = cfg.data
        notes = ["dev/test: exact and f1 in percent (official SQuAD 2.0 script semantics); "
                 "the null-answer threshold is tuned on dev and applied to test"]
        examples = {}
        for split in ("train", "dev", "test"):
            items = sources.read_task_split(data, cfg.task, split)
            limit = getattr(data, f"max_{split}")
            chosen = splits.subsample(items, limit or None, seed=cfg.seed)
            if len(chosen) < len(items):
                notes.append(f"{split}: subsampled to {len(chosen)} of {len(items)} questions (seed {cfg.seed})")
            examples[split] = chosen
        if data.dev == data.test:
            notes.append(f"dev and test are the same file ({data.dev}): test numbers are not held out")
        features = {split: qa.encode_qa(items, tokenizer, max_length=cfg.max_length, doc_stride=cfg.stride,
                                        max_query_length=cfg.max_query_length)
                    for split, items in examples.items()}
        return cls(cfg, tokenizer, examples, features, notes)

    def make_head(self, in_features: int, seed: int) -> nnx.Module:
        return QAHead(in_features, self.cfg.head_dropout, rngs=nnx.Rngs(seed))

    loss_fn = staticmethod(models.qa_loss)

    def train_batches(self, stage: StageConfig, epoch: int, strategy: Batching) -> list[Batch]:
        """An epoch's batches of whole question windows (never packed: they fill max_length already)."""
        del strategy
        if stage.batch_size <= 0:
            raise AladError("task qa batches by questions: set stages.*.batch_size (token_budget is for alignment)")
        return qa.make_qa_batches(self.features["train"], **qa.process_share(stage.batch_size, jax.device_count()),
                                  shuffle=True, seed=self.cfg.seed, epoch=epoch)

    def text_rows(self, split: str) -> tagging.TaggingFeatures:
        """Question + context rows without padding, for continual alignment and cosine."""
        feats = self.features[split]
        lengths = feats.attention_mask.sum(1)
        ids = [feats.input_ids[i, :n] for i, n in enumerate(lengths)]
        segments = [feats.token_type_ids[i, :n] for i, n in enumerate(lengths)]
        ignore = [np.full(len(r), tagging.IGNORE_INDEX, np.int32) for r in ids]
        return tagging.TaggingFeatures(ids, ignore, [np.full(len(r), -1, np.int32) for r in ids],
                                       feats.example_index.copy(), len(self.examples[split]), 0, 0,
                                       token_type_ids=segments)

    def _logits(self, model: nnx.Module, split: str, prepare=None) -> tuple[np.ndarray, np.ndarray]:
        graphdef, state = nnx.split(model)
        feats = self.features[split]
        start = np.zeros(feats.input_ids.shape, np.float32)
        end = np.zeros_like(start)
        for batch in qa.make_qa_batches(feats, batch_size=self.cfg.eval_batch_size):
            s, e = (np.asarray(x) for x in task_model.predict_spans(graphdef, state, prepare(batch) if prepare else batch))
            real = batch["feature_index"] >= 0
            start[batch["feature_index"][real]] = s[real]
            end[batch["feature_index"][real]] = e[real]
        return start, end

    def _answers(self, model: nnx.Module, split: str, prepare=None):
        start, end = self._logits(model, split, prepare)
        return qa.postprocess_qa(self.examples[split], self.features[split], start, end, null_threshold=math.inf)

    def predict(self, model: nnx.Module, split: str, strategy: Batching, prepare=None) -> tuple[list[dict], dict]:
        """Per question of a split: its id, predicted answer text ("" = no answer) and gold answers, with the
        null threshold tuned on dev (on dev itself for dev); and ``{"null_threshold": ..}``.

        ``prepare`` applies to the evaluated split's batches only (a cache is per split); ``strategy`` is unused
        (question windows are batched as they are).
        """
        del strategy
        dev_spans, dev_diffs = self._answers(model, "dev", prepare if split == "dev" else None)
        threshold = qa.best_null_threshold(self.examples["dev"], dev_diffs, dev_spans)
        spans, diffs = (dev_spans, dev_diffs) if split == "dev" else self._answers(model, split, prepare)
        answers = qa.apply_null_threshold(spans, diffs, threshold)
        records = [{"id": e.id, "pred": answers[e.id], "answers": [a.text for a in e.answers]}
                   for e in self.examples[split]]
        return records, {"null_threshold": qa.threshold_to_json(threshold)}  # strict JSON: +-inf as strings

    def evaluate(self, model: nnx.Module, split: str, strategy: Batching, prepare=None) -> tuple[float, dict]:
        """F1 (headline) and EM in percent, with the null threshold (see :meth:`predict`)."""
        return self.score(*self.predict(model, split, strategy, prepare))

    def score(self, records: list[dict], meta: dict) -> tuple[float, dict]:
        """(headline, all metrics) of :meth:`predict`'s output, by the scorer that reads saved predictions."""
        scores = predictions_file.score_records("qa", records)
        return float(scores["f1"]), {**scores, **meta}
