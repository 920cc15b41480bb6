"""The one way from a data config to examples: format dispatch, ``packaged:`` names, file checks.

Everything that knows which reader a ``data.format`` means, where a
``packaged:NAME`` lives, and whether a file is what its format says goes
through here: the pipeline's task splits and stage-1 corpus, ``alad predict
--file``, and :func:`read_dataset` for library users.

- :func:`read_task_split`: one labelled split of the config's ``data`` section;
- :func:`read_corpus`: the stage-1 sentences of ``corpus.paths``, labels dropped;
- :func:`read_sentences`: a file of sentences to label (text, CoNLL or CoNLL-U);
- :func:`read_conllu_to_label`: a CoNLL-U file to label, its lines kept for writing it back;
- :func:`read_dataset`: any reader by format name, with its options checked.

Every file's encoding is checked before its format is guessed (a UTF-16
file is refused as not UTF-8, not as some other format). A file given as
``conll`` that holds CoNLL-U (or the reverse) is refused with one line naming
the format it looks like. With ``skip_malformed`` a
malformed sentence is skipped and reported (:class:`Skipped`) instead of
stopping the run at its file:line.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import re
from pathlib import Path

from alad_jax.data import hub_datasets, packaged, readers
from alad_jax.data.readers import QAExample, TaggedSentence
from alad_jax.errors import AladError

FILE_FORMATS = ("conllu", "conll", "text", "squad")
TAGGING_FORMATS = ("conllu", "conll", "hf")
QA_FORMATS = ("squad", "hf")
CORPUS_FORMATS = ("conllu", "text")
_CONLLU_ID = re.compile(r"^[1-9][0-9]*([-.][0-9]+)?$")
SNIFF_LINES = 50


@dataclasses.dataclass
class Skipped:
    """Malformed sentences skipped by ``skip_malformed``: how many, and the first few file:line reasons."""

    messages: list[str] = dataclasses.field(default_factory=list)
    shown: int = 3

    def note(self) -> str | None:
        """One line for a run's notes, or None when nothing was skipped."""
        if not self.messages:
            return None
        first = "; ".join(self.messages[: self.shown])
        more = f" (and {len(self.messages) - self.shown} more)" if len(self.messages) > self.shown else ""
        return f"skipped {len(self.messages)} malformed sentence(s) (data.skip_malformed): {first}{more}"


def resolve_source(source: str) -> str:
    """``packaged:NAME`` -> the installed file; anything else unchanged (a path or a split name)."""
    if source.startswith("packaged:"):
        return str(packaged.packaged_path(source.split(":", 1)[1]))
    return source


def looks_like(path: readers.Source) -> str | None:
    """``"conllu"`` or ``"conll"`` from the first word lines of ``path``, None when it cannot tell.

    CoNLL-U: 10 tab-separated columns whose first is a word id (``1``, ``1-2``, ``1.1``).
    CoNLL: 2 to 6 columns whose first is a word (not a number sequence).
    The encoding is checked first (:func:`readers.read_lines`): a file that is not UTF-8 is refused
    as such, never guessed to be some other format.
    """
    lines = readers.read_lines(path)[: SNIFF_LINES * 4]
    word_lines = [line for line in lines if line.strip() and not line.startswith("#")][:SNIFF_LINES]
    if not word_lines:
        return None
    fields = [line.split("\t") for line in word_lines]
    if all(len(f) == 10 and _CONLLU_ID.match(f[0]) for f in fields):
        return "conllu"
    columns = [len(line.split()) for line in word_lines if not line.startswith("-DOCSTART-")]
    if columns and all(2 <= n <= 6 for n in columns) and not all(_CONLLU_ID.match(f[0]) for f in fields):
        return "conll"
    return None


def _check_format(path: readers.Source, fmt: str, setting: str) -> None:
    """Refuses a CoNLL-U file read as ``conll`` (or the reverse), naming what it looks like.

    ``setting`` is where the user chose ``fmt`` (``data.format``, ``--format``): the line says to change it.
    """
    seen = looks_like(path)
    if fmt in ("conll", "conllu") and seen is not None and seen != fmt:
        described = ("CoNLL-U (10 tab-separated columns, numbered words)" if seen == "conllu"
                     else "column CoNLL (a word and its tag per line)")
        raise AladError(f"{path} looks like {described}, not {fmt}; set {setting} to {seen} or give a {fmt} file")


def _file(source: str, key: str, fix: str) -> str:
    path = resolve_source(source)
    if not Path(path).is_file():
        raise AladError(f"data file {path} does not exist; {fix} (config key '{key}')")
    return path


def read_task_split(data, task: str, split: str, *, skipped: Skipped | None = None) -> list:
    """The examples of ``split`` (``"train"``, ``"dev"``, ``"test"``) of a config's ``data`` section.

    Tagging tasks (pos, ner) give ``TaggedSentence``s, task qa ``QAExample``s.
    ``skipped`` collects malformed sentences when ``data.skip_malformed`` is on.
    """
    source, key = getattr(data, split), f"data.{split}"
    if task == "qa":
        if data.format == "hf":
            return hub_datasets.load_hf_squad(data.hf_name, source, config=data.hf_config or None)
        if data.format == "squad":
            return readers.read_squad(_file(source, key, "give a SQuAD v2 JSON file"))
        raise AladError(f"config key 'data.format' is {data.format!r}; for task qa use {' or '.join(QA_FORMATS)}")
    if data.format == "hf":
        return hub_datasets.load_hf_tagging(data.hf_name, source, config=data.hf_config or None,
                                            tokens_column=data.tokens_column, tags_column=data.tags_column)
    if data.format not in ("conllu", "conll"):
        raise AladError(f"config key 'data.format' is {data.format!r}; for task {task} use "
                        f"{', '.join(TAGGING_FORMATS)}")
    path = _file(source, key, "set data.train/data.dev/data.test to existing files")
    _check_format(path, data.format, "data.format")
    sink = skipped.messages if skipped is not None and data.skip_malformed else None
    if data.format == "conllu":
        return readers.read_conllu(path, tag=data.tag, skipped=sink)
    return readers.read_conll(path, token_col=data.token_col, tag_col=data.tag_col, scheme=data.scheme, skipped=sink)


def corpus_files(paths: list[str]) -> list[str]:
    """``corpus.paths`` as files: ``packaged:NAME`` resolved, globs of shards expanded (sorted)."""
    files = []
    for source in paths:
        source = resolve_source(source)
        if glob.has_magic(source):
            matched = sorted(glob.glob(source))
            if not matched:
                raise AladError(f"corpus.paths: the glob {source} matches no file; fix the pattern or the directory")
            files += matched
        else:
            files.append(source)
    return files


def read_corpus(corpus) -> list[TaggedSentence]:
    """The stage-1 general corpus: the sentences of every ``corpus.paths`` file (or glob), labels dropped."""
    if corpus.format not in CORPUS_FORMATS:
        raise AladError(f"config key 'corpus.format' is {corpus.format!r}; use {' or '.join(CORPUS_FORMATS)}")
    sentences = []
    for source in corpus_files(corpus.paths):
        path = _file(source, "corpus.paths", "fix the list")
        _check_format(path, corpus.format, "corpus.format")
        sentences += readers.read_conllu(path) if corpus.format == "conllu" else readers.read_text(path)
    return [TaggedSentence(s.words, None, s.source) for s in sentences]


def read_sentences(path: readers.Source, fmt: str = "text") -> list[TaggedSentence]:
    """Sentences to label from a file: ``text`` (one per line), ``conll`` (the first column; a file of
    words alone is fine) or ``conllu`` (gold tags dropped)."""
    if not isinstance(path, readers.InMemoryFile) and not Path(path).is_file():
        raise AladError(f"--file {path}: no such file; give the path of a text, CoNLL or CoNLL-U file")
    if fmt == "text":
        sentences = readers.read_text(path)
    elif fmt == "conll":
        _check_format(path, fmt, "--format")
        sentences = readers.read_conll(path, tag_col=None)
    elif fmt == "conllu":
        sentences = read_conllu_to_label(path)
    else:
        raise AladError(f"--format {fmt!r} is unknown for {path}; use text, conll or conllu")
    return [TaggedSentence(s.words, None, s.source) for s in sentences]


def read_conllu_to_label(path: readers.Source) -> list[readers.ConlluSentence]:
    """A CoNLL-U file to label, every line kept for writing it back; annotated or not (the column to
    predict may hold ``_``). Its encoding and format are checked first, as for every input."""
    _check_format(path, "conllu", "--format")
    return readers.read_conllu_sentences(path)


def _readers():
    return {
        "conll": readers.read_conll,
        "conllu": readers.read_conllu,
        "text": readers.read_text,
        "squad": readers.read_squad,
        "hf": hub_datasets.load_hf,
        "tfds": hub_datasets.load_tfds_tagging,
        "packaged": packaged.load_packaged,
    }


FORMATS = ("conll", "conllu", "text", "squad", "hf", "tfds", "packaged")


def read_dataset(fmt: str, path_or_name: str, **options) -> list[TaggedSentence] | list[QAExample]:
    """Read ``path_or_name`` in format ``fmt`` with reader ``options`` (checked against the reader's).

    ``conll``/``conllu``/``text``/``squad`` take a file path; ``hf`` a Hub
    dataset name (options: ``split``, ``kind`` = tagging/text/squad, ``config``,
    column names); ``tfds`` a TFDS name; ``packaged`` one of the embedded
    corpora (see :mod:`alad_jax.data.packaged`).
    """
    by_format = _readers()
    if fmt not in by_format:
        raise AladError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    reader = by_format[fmt]
    _, *valid = inspect.signature(reader).parameters  # the first one is the path or name
    for key in options:
        if key not in valid or key == "skipped":
            raise AladError(f"unknown option {key!r} for data format {fmt!r}; valid options: "
                            f"{', '.join(v for v in valid if v != 'skipped')}")
    if fmt in ("conll", "conllu"):
        _check_format(path_or_name, fmt, "the format")
    return reader(path_or_name, **options)
