"""Datasets by name: Hugging Face ``datasets`` (and TensorFlow Datasets as an optional extra).

Loading needs the Hub (or a local cache / ``data_files``); the mapping from a
dataset's rows to :class:`TaggedSentence` / :class:`QAExample` is separate and
takes an in-memory dataset, so it runs (and is tested) offline.

Column presets for known datasets, keyed by the last part of the Hub name
(``"eriktks/conll2003"`` -> ``conll2003``); explicit column arguments win.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from alad_jax.data.readers import Answer, QAExample, TaggedSentence, check_answers
from alad_jax.errors import AladError

logger = logging.getLogger(__name__)

# (tokens column, tags column)
TAGGING_PRESETS: dict[str, tuple[str, str]] = {
    "conll2003": ("tokens", "ner_tags"),
    "universal_dependencies": ("tokens", "upos"),
    # MultiCoNER v2 ships string tags in "ner_tags" and their ClassLabel ids in "ner_tags_index".
    "multiconer_v2": ("tokens", "ner_tags"),
    "wnut_17": ("tokens", "ner_tags"),
}


def _preset(name: str) -> tuple[str, str]:
    return TAGGING_PRESETS.get(name.rstrip("/").split("/")[-1].lower(), ("tokens", "ner_tags"))


def _select_split(dataset, split: str, where: str):
    """``dataset`` itself if it is one split, else its ``split`` (AladError listing the splits there are)."""
    if isinstance(dataset, Mapping):  # DatasetDict
        if split not in dataset:
            raise AladError(f"{where}: no split {split!r}; it has {', '.join(sorted(dataset)) or 'none'}")
        return dataset[split]
    return dataset


def _load(name: str, split: str, config: str | None, data_files, dataset):
    where = f"hf:{name}" + (f" ({config})" if config else "")
    if dataset is None:
        import datasets

        try:
            dataset = datasets.load_dataset(name, config, data_files=data_files)
        except Exception as err:  # the Hub client raises many types; the user needs one line
            raise AladError(
                f"{where}: could not load the dataset ({type(err).__name__}: {err}); "
                "check the name/config, the network or HF cache, or pass local data_files"
            ) from None
    return _select_split(dataset, split, where), f"{where}[{split}]"


def _check_columns(column_names: Sequence[str], wanted: Iterable[str], where: str) -> None:
    for column in wanted:
        if column not in column_names:
            raise AladError(f"{where}: no column {column!r}; it has {', '.join(column_names)}; set the column name option")


def _label_names(feature) -> list[str] | None:
    """Names of a ClassLabel or Sequence/List(ClassLabel) feature (HF or TFDS), else None."""
    inner = getattr(feature, "feature", feature)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def rows_to_sentences(
    rows: Iterable[Mapping], tokens_column: str, tags_column: str | None, tag_names: Sequence[str] | None, where: str
) -> list[TaggedSentence]:
    """Rows holding a word list (and a tag list: names, or ids into ``tag_names``) -> sentences.

    Empty rows are dropped and counted; a row whose tags do not match its words,
    or an integer tag without names, raises :class:`AladError` naming the row.
    """
    sentences = []
    empty = 0
    for i, row in enumerate(rows):
        words = tuple(_as_str(w) for w in row[tokens_column])
        if not words:
            empty += 1
            continue
        tags = None
        if tags_column is not None:
            raw = list(row[tags_column])
            if len(raw) != len(words):
                raise AladError(f"{where} row {i}: {len(words)} tokens but {len(raw)} tags; the columns do not line up")
            if raw and not isinstance(raw[0], (str, bytes)):
                if tag_names is None:
                    raise AladError(
                        f"{where} row {i}: column {tags_column!r} holds integer ids without ClassLabel names; "
                        "choose a column with string tags or a ClassLabel feature"
                    )
                if any(not 0 <= int(t) < len(tag_names) for t in raw):
                    raise AladError(f"{where} row {i}: tag id out of range 0..{len(tag_names) - 1} in {raw}")
                tags = tuple(tag_names[int(t)] for t in raw)
            else:
                tags = tuple(_as_str(t) for t in raw)
        sentences.append(TaggedSentence(words, tags, f"{where} row {i}"))
    if not sentences:
        raise AladError(f"{where}: no non-empty rows; check the split and column names")
    if empty:
        logger.info("%s: %d sentences, %d empty rows skipped", where, len(sentences), empty)
    return sentences


def load_hf_tagging(
    name: str,
    split: str,
    *,
    config: str | None = None,
    tokens_column: str | None = None,
    tags_column: str | None = None,
    data_files=None,
    dataset=None,
) -> list[TaggedSentence]:
    """Token-tagging sentences from a Hub dataset (or the given in-memory ``dataset``/``DatasetDict``).

    Columns default to the dataset's preset (``TAGGING_PRESETS``), else
    ``tokens``/``ner_tags``. ClassLabel ids are converted to their names.
    """
    preset_tokens, preset_tags = _preset(name)
    tokens_column = tokens_column or preset_tokens
    tags_column = tags_column or preset_tags
    ds, where = _load(name, split, config, data_files, dataset)
    _check_columns(ds.column_names, (tokens_column, tags_column), where)
    return rows_to_sentences(ds, tokens_column, tags_column, _label_names(ds.features[tags_column]), where)


def load_hf_text(
    name: str, split: str, *, config: str | None = None, text_column: str = "text", data_files=None, dataset=None
) -> list[TaggedSentence]:
    """Unlabelled sentences from a text column (whitespace-split words); empty texts are skipped and counted."""
    ds, where = _load(name, split, config, data_files, dataset)
    _check_columns(ds.column_names, (text_column,), where)
    rows = ({"words": (row[text_column] or "").split()} for row in ds)
    return rows_to_sentences(rows, "words", None, None, where)


def load_hf_squad(
    name: str, split: str, *, config: str | None = None, data_files=None, dataset=None
) -> list[QAExample]:
    """SQuAD-style rows (``id, title, context, question, answers{text, answer_start}``); empty answers = unanswerable."""
    ds, where = _load(name, split, config, data_files, dataset)
    _check_columns(ds.column_names, ("id", "context", "question", "answers"), where)
    examples = []
    for i, row in enumerate(ds):
        answers = row["answers"]
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
        if len(texts) != len(starts):
            raise AladError(f"{where} row {i}: {len(texts)} answer texts but {len(starts)} answer_start values")
        qid = str(row["id"])
        checked = check_answers(qid, row["context"], (Answer(t, int(s)) for t, s in zip(texts, starts)), f"{where} row {i}")
        examples.append(QAExample(qid, row["question"], row["context"], checked, row.get("title") or ""))
    if not examples:
        raise AladError(f"{where}: no questions; check the split")
    return examples


HF_KINDS = ("tagging", "text", "squad")


def load_hf(
    name: str,
    *,
    split: str,
    kind: str = "tagging",
    config: str | None = None,
    tokens_column: str | None = None,
    tags_column: str | None = None,
    text_column: str = "text",
    data_files=None,
) -> list[TaggedSentence] | list[QAExample]:
    """``read_dataset("hf", name, split=..., kind=...)``: the loader for ``kind`` (tagging, text or squad)."""
    common = dict(config=config, data_files=data_files)
    if kind == "tagging":
        return load_hf_tagging(name, split, tokens_column=tokens_column, tags_column=tags_column, **common)
    if tokens_column is not None or tags_column is not None:
        raise AladError(f"hf:{name}: tokens_column/tags_column apply to kind 'tagging', not {kind!r}")
    if kind == "text":
        return load_hf_text(name, split, text_column=text_column, **common)
    if kind == "squad":
        return load_hf_squad(name, split, **common)
    raise AladError(f"unknown hf dataset kind {kind!r}; use one of {', '.join(HF_KINDS)}")


def load_tfds_tagging(
    name: str, *, split: str, tokens_key: str = "tokens", tags_key: str = "ner", data_dir: str | None = None
) -> list[TaggedSentence]:
    """Token-tagging sentences from TensorFlow Datasets (optional extra ``alad-jax[tfds]``)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise AladError(
            f"tfds:{name}: TensorFlow Datasets is not installed; `pip install alad-jax[tfds]` or use format 'hf'"
        ) from None
    where = f"tfds:{name}[{split}]"
    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True)
    except Exception as err:  # tfds raises many types; the user needs one line
        raise AladError(f"{where}: could not load ({type(err).__name__}: {err}); check the name, split and data_dir") from None
    keys = list(info.features.keys())
    _check_columns(keys, (tokens_key, tags_key), where)
    return rows_to_sentences(tfds.as_numpy(ds), tokens_key, tags_key, _label_names(info.features[tags_key]), where)
