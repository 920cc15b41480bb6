"""Experiment configuration: one dataclass tree, TOML files, dotted overrides.

The embedded default (``Config()``) is the POS experiment that ``alad run``
runs with no arguments. A config file (TOML, never executed) and then
``KEY=VALUE`` overrides are applied on top of it, each by dotted path
(``data.train=...``, ``stages.align.lr=3e-4``, ``windows=[1,3,5]``). An unknown
key or a value of the wrong type is an :class:`AladError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from alad_jax.errors import AladError
from alad_jax.models.precision import MATMUL_DTYPES

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEACHER_CLASSIFIERS = ("auto", "keep", "train")  # what happens to a fine-tuned teacher's classifier


@dataclasses.dataclass
class DataConfig:
    """The labelled task data.

    ``train``/``dev``/``test`` are file paths, ``packaged:NAME`` for the data
    shipped by the ``data`` extra (porttinari, petrogold, danteshots, wnut16),
    or split names for ``format = "hf"``. ``dev``/``test`` may be ``hash``: a
    deterministic md5-of-words split of the train source (1 in ``hash_every``
    sentences each).
    """

    format: str = "conllu"  # conllu, conll (word and tag columns), squad (task qa) or hf (Hugging Face datasets)
    train: str = "packaged:porttinari"  # training data: a file, packaged:NAME, or a split name (hf)
    dev: str = "hash"  # dev data, as train; hash: 1 in hash_every train sentences, by md5 of the words
    test: str = "hash"  # test data, as dev
    hash_every: int = 10  # the hash split takes 1 in this many sentences for dev, and another 1 for test
    tag: str = "upos"  # conllu: upos or xpos
    token_col: int = 0  # conll: the word column (0 = first)
    tag_col: int = -1  # conll: the tag column (-1 = last)
    scheme: str = "auto"  # conll tag scheme: auto, BIO, IOB1, BIOES, none
    hf_name: str = ""  # format = "hf": dataset name, config and columns
    hf_config: str = ""  # format = "hf": the dataset's configuration name ("" = none)
    tokens_column: str = "tokens"  # format = "hf": the column of words
    tags_column: str = "ner_tags"  # format = "hf": the column of tags
    max_train: int = 400  # subsample (0 = all); stated in the outputs
    max_dev: int = 200  # subsample dev (0 = all)
    max_test: int = 600  # subsample test (0 = all)
    # A malformed sentence of a real corpus stops the run at its file:line; true: skip it, counted in the notes.
    skip_malformed: bool = False


@dataclasses.dataclass
class CorpusConfig:
    """Unlabelled general-domain text for stage 1 (task-independent alignment).

    ``paths`` are files or globs of shards (``text``: a sentence per line; ``conllu``);
    ``format = "hf"`` streams the Hugging Face dataset ``hf_name`` instead (each non-blank
    line of ``text_column`` a sentence). A corpus whose hidden states do not fit
    ``cache_budget_gb`` (or ``hf``, or ``max_sentences = 0``: the whole stream) is streamed
    (:mod:`alad_jax.data.stream`, docs/scaling.md).
    """

    format: str = "conllu"  # conllu or text (one sentence a line, words split on whitespace)
    # The corpus files: paths or packaged:NAME; their labels are not used.
    paths: list[str] = dataclasses.field(default_factory=lambda: ["packaged:petrogold", "packaged:danteshots"])
    max_sentences: int = 1000  # subsample the corpus (0 = all)
    val_sentences: int = 150  # held out of the corpus for stage 1's validation MSE
    hf_name: str = ""  # format = "hf": the Hugging Face dataset streamed as the corpus
    hf_config: str = ""  # format = "hf": its configuration
    hf_split: str = "train"  # format = "hf": its split
    text_column: str = "text"  # format = "hf": the column whose non-blank lines are sentences


@dataclasses.dataclass
class StageConfig:
    """Optimisation of one stage or case. ``token_budget`` > 0 batches by tokens.

    Every stage stops by one rule: evaluate on dev (alignment: validation MSE)
    after every epoch, keep the best state, and stop once ``patience``
    evaluations in a row have not improved on the best by more than
    ``min_delta`` ("plateau"), or after ``epochs`` epochs ("cap").
    """

    epochs: float = 4.0  # the cap (max epochs)
    patience: int = 2  # evaluations without improvement before stopping (0 = run to the cap)
    min_delta: float = 0.0  # an improvement must exceed this (metric units: 0.001 = 0.1 accuracy points)
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    batch_size: int = 32  # sentences per batch (0 when token_budget is set)
    token_budget: int = 0  # > 0: batches of about this many sub-word positions instead of batch_size sentences
    warmup_fraction: float = 0.0  # share of the steps spent warming the lr up from 0
    schedule: str = "constant"  # constant (the reference recipe) or linear (decay to 0 after warmup)
    max_minutes: float = 0.0  # wall-clock budget in minutes (0 = none): the paper gives stage 1 4 h = 240 a segment
    max_steps: int = 0  # 0 = epochs decide
    eval_every: int = 0  # a streamed stage validates every this many steps (0: 1000)
    # stages.align.from: a stage-1 adapter (safetensors, `alad align`) to start from instead of training stage 1
    from_: str = ""


def _stage(**kw) -> Any:
    return dataclasses.field(default_factory=lambda: StageConfig(**kw))


@dataclasses.dataclass
class StagesConfig:
    """Every stage and case of the pipeline, by name (docs/method.md, section 2)."""

    # Caps (epochs) are generous: rows stop on their dev plateau. Every student row follows one rule,
    # patience 3 with min_delta 0.001 (0.1 points): patience 1-2 stopped slowly rising curves on one dip
    # after gains under 0.1 points (with other dropout masks, the probe stopped at epoch 12 of a curve that
    # rises to epoch 25 and lost 2 points, student_ft at 9 of 11 and lost 1.2: docs/statistics.md). The
    # teacher trains in small batches with warmup and linear decay, patience 3 under a cap of 24 (it must
    # end as the ceiling: at cap 8, patience 1, its best was epoch 7 of 8 and still rising; at cap 16 one seed
    # of three still gained 0.1-0.2 points an epoch at the cap). The linear
    # probe and the head case get a higher lr than the reference so they converge within their caps. Under
    # patience 3, student_ft reached its old cap of 15 still improving and noalign_frozen ran 26 of 30: the
    # caps of the student fine-tunes and of the frozen rows are 25, 20 and 40.
    teacher: StageConfig = _stage(epochs=24, lr=2e-4, weight_decay=0.01, batch_size=16, warmup_fraction=0.1,
                                  schedule="linear", patience=3, min_delta=0.001)  # stage 0: teacher + head
    align: StageConfig = _stage(epochs=3, lr=5e-4, weight_decay=0.01, batch_size=0, token_budget=4096)  # stage 1
    continual: StageConfig = _stage(epochs=10, lr=1e-4, weight_decay=0.01, batch_size=0, token_budget=4096)  # stage 2
    head: StageConfig = _stage(epochs=40, lr=1e-3, weight_decay=0.0, patience=3, min_delta=0.001)  # case head: the head only
    frozen: StageConfig = _stage(epochs=40, lr=1e-4, weight_decay=0.01, patience=3, min_delta=0.001)  # cases frozen, noalign_frozen
    joint: StageConfig = _stage(epochs=20, lr=2e-4, weight_decay=0.01, patience=3, min_delta=0.001)  # case joint: all
    probe: StageConfig = _stage(epochs=40, lr=2e-3, weight_decay=0.0, patience=3, min_delta=0.001)  # student_probe
    student_ft: StageConfig = _stage(epochs=25, lr=2e-4, weight_decay=0.01, patience=3, min_delta=0.001)  # student_ft


@dataclasses.dataclass
class OptimConfig:
    """AdamW and gradient clipping, shared by every stage."""

    b1: float = 0.9  # AdamW beta1
    b2: float = 0.98  # AdamW beta2
    eps: float = 1e-6  # AdamW epsilon
    clip_norm: float = 1.0  # clip gradients to this global norm


@dataclasses.dataclass
class AlignmentSettings:
    """How teacher and student states are paired in stages 1-2 and the cosine."""

    # token: position by position (the teacher's tokenizer must cut every sentence into the student's word
    # pieces; its ids and special tokens may differ); word: per word, the mean over each side's sub-words.
    level: str = "token"


@dataclasses.dataclass
class MeshSettings:
    """Device mesh: sizes of the data-parallel and FSDP axes (-1 = all devices)."""

    data: int = -1  # data-parallel axis size (-1 = all devices not used by fsdp)
    fsdp: int = 1  # FSDP axis size: parameters and optimizer state sharded over it


@dataclasses.dataclass
class Config:
    """The whole experiment. ``Config()`` is the embedded default (POS, Porttinari)."""

    task: str = "pos"  # pos, ner or qa
    teacher: str = MINILM  # Hub id or local directory (config.json + safetensors or flax_model.msgpack)
    teacher_finetuned: bool = False  # True: skip stage 0 (the teacher already solves the task)
    # With teacher_finetuned: "keep" the checkpoint's own classifier (HF token-classification layout),
    # "train" a new head on the frozen teacher, or "auto" (keep it when the checkpoint has one).
    teacher_classifier: str = "auto"
    # What to train besides the teacher: case names (docs/guide.md), or "all" (the full comparison);
    # the stages each case needs follow from it.
    cases: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    student: str = MINILM  # Hub id or local directory of the compressed model
    student_layers: int = 2  # > 0: keep only the first N layers of `student` (layer dropping)
    windows: list[int] = dataclasses.field(default_factory=lambda: [3])  # AlAd window sizes K (odd), rows for each
    adapter_hidden: int = 1280  # AlAd hidden width (W1's output)
    adapter_impl: str = "auto"  # AlAd form: fused (a convolution), explicit (vmapped windows), auto (fused)
    matmul_dtype: str = "bfloat16"  # train steps' matmuls: bfloat16 operands, float32 accumulation; or float32
    cache_features: bool = True  # stages 1-2: compute frozen hidden states once
    # Tagging fine-tunes, token-level cached alignment, their evaluation and the feature cache run on
    # packed rows (several sentences per row of max_length, block-diagonal attention): one shape, little
    # padding. QA rows (whole windows) and word-level alignment keep length buckets.
    packing: bool = True
    max_length: int = 64  # longer sentences become overlapping windows (tagging); qa: question + context
    stride: int = 16  # overlap of those windows (tagging) / document stride (qa)
    max_query_length: int = 64  # qa: question tokens kept
    head_dropout: float = 0.1  # dropout before the task head
    seed: int = 0  # initialisation, shuffling and subsampling
    # Several seeds (e.g. [0, 1, 2]): one whole run per seed in WORKDIR/seed_<s>, reported as mean, std and
    # intervals across seeds (docs/statistics.md); empty: one run with `seed` in WORKDIR.
    seeds: list[int] = dataclasses.field(default_factory=list)
    cache_dir: str = ""  # Hugging Face cache directory ("" = the library default)
    eval_batch_size: int = 32  # also the latency batch: its program is already compiled by evaluation
    latency_batches: int = 20  # timed forwards per row (rows take turns)
    checkpoint_every: int = 200  # steps between resumable checkpoints
    keep_checkpoints: bool = False  # false: a stage's checkpoints go once it has finished (its outputs stay)
    keep_cache: bool = True  # false: the feature cache (cache/) is deleted when the run ends
    # Stage 1 caches its corpus's hidden states when they fit this many GB, else streams it with the teacher online.
    cache_budget_gb: float = 4.0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    stages: StagesConfig = dataclasses.field(default_factory=StagesConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshSettings = dataclasses.field(default_factory=MeshSettings)
    alignment: AlignmentSettings = dataclasses.field(default_factory=AlignmentSettings)

    def validate(self) -> "Config":
        if self.task not in ("pos", "ner", "qa"):
            raise AladError(f"config key 'task' is {self.task!r}; use one of pos, ner, qa")
        if not self.windows:
            raise AladError("config key 'windows' is empty; give at least one odd window size, e.g. windows=[3]")
        for k in self.windows:
            if k < 1 or k % 2 == 0:
                raise AladError(f"config key 'windows' holds {k}; window sizes must be odd and positive (1, 3, 5, ...)")
        if len(set(self.windows)) != len(self.windows):
            raise AladError(f"config key 'windows' repeats a size: {self.windows}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise AladError(f"config key 'seeds' is {self.seeds}; give distinct non-negative seeds, e.g. seeds=[0,1,2]")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise AladError(f"config key 'matmul_dtype' is {self.matmul_dtype!r}; use {' or '.join(MATMUL_DTYPES)}")
        if self.teacher_classifier not in TEACHER_CLASSIFIERS:
            raise AladError(f"config key 'teacher_classifier' is {self.teacher_classifier!r}; "
                            f"use {', '.join(TEACHER_CLASSIFIERS)}")
        if self.alignment.level not in ("token", "word"):
            raise AladError(f"config key 'alignment.level' is {self.alignment.level!r}; use token or word")
        if self.student_layers < 0:
            raise AladError(f"config key 'student_layers' is {self.student_layers}; use 0 (keep all) or a positive count")
        for name, stage in dataclasses.asdict(self.stages).items():
            if stage["patience"] < 0:
                raise AladError(f"config key 'stages.{name}.patience' is {stage['patience']}; use 0 (no early stop) or more")
            if stage["from_"] and name != "align":
                raise AladError(f"config key 'stages.{name}.from' is set; only stages.align.from (a stage-1 "
                                "adapter) is")
            if (stage["batch_size"] > 0) == (stage["token_budget"] > 0):
                raise AladError(
                    f"config keys 'stages.{name}.batch_size' and 'stages.{name}.token_budget': set exactly one above 0"
                )
        return self


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; ints widen to floats."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise AladError(f"config key '{key}' must be a list, e.g. {key}=[1,3,5]; got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except AladError as e:
                errors.append(e)
        raise errors[0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None) and value is None:
        return None
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise AladError(f"config key '{key}' must be {name}; got {value!r}")


def _apply(obj: Any, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    target = obj
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(target):
            raise AladError(f"{source}: config key '{key}' is not a field ('{'.'.join(parts[:i])}' has no sub-keys)")
        names = [f.name for f in dataclasses.fields(target)]
        part = _KEYWORD_FIELDS.get(part, part)
        if part not in names:
            if part in _RENAMED:
                raise AladError(f"{source}: config key '{key}' was renamed: {_RENAMED[part]}")
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean '{'.'.join(parts[:i] + close)}'?" if close else f"; known keys here: {', '.join(names)}"
            raise AladError(f"{source}: unknown config key '{key}'{hint}")
        if i == len(parts) - 1:
            tp = _field_types(type(target))[part]
            current = getattr(target, part)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise AladError(f"{source}: config key '{key}' is a section; set its fields, e.g. {key}.FIELD=VALUE")
                for sub, v in value.items():
                    _apply(obj, f"{key}.{sub}", v, source)
            else:
                setattr(target, part, _coerce(value, tp, key))
        else:
            target = getattr(target, part)


_KEYWORD_FIELDS = {"from": "from_"}  # config keys that are Python keywords -> their field names
_RENAMED = {"max_seconds": "set max_minutes (in minutes, the paper's unit: 14400 s = 240)"}


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in table.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def parse_value(text: str) -> Any:
    """A command-line value: a TOML literal (``3``, ``1e-4``, ``true``, ``[1,3]``, ``"x"``), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The embedded default, then the TOML file at ``path``, then ``KEY=VALUE`` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AladError(f"config file {path} does not exist; pass an existing TOML file (see configs/)")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise AladError(f"config file {path} is not valid TOML: {e}") from None
        for key, value in _flatten(table):
            _apply(config, key, value, str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise AladError(f"override {item!r} is not KEY=VALUE (e.g. seed=1 or data.train=path/to/train.conllu)")
        _apply(config, key.strip(), parse_value(text.strip()), "command line")
    return config.validate()


def dump_toml(config: Config) -> str:
    """The resolved config as TOML (what ``alad run`` writes to the work directory)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []

    def emit(table: dict, prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        sections = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        keys = {field: key for key, field in _KEYWORD_FIELDS.items()}
        lines.extend(f"{keys.get(k, k)} = {fmt(v)}" for k, v in scalars.items())
        for k, v in sections.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(to_dict(config), "")
    return "\n".join(lines).lstrip() + "\n"
