"""Readers from files on disk to sentences and QA examples.

Every reader returns plain frozen records (:class:`TaggedSentence`,
:class:`QAExample`) and either reads the whole file or raises
:class:`~alad_jax.errors.AladError` naming ``path:line`` and what was expected:
nothing is skipped silently. The only lines dropped on purpose are the ones a
format defines as non-data (CoNLL ``-DOCSTART-``, CoNLL-U comments,
multiword-token ranges and empty nodes, blank lines in plain text), and those
are counted in the log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence

from alad_jax.errors import AladError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
    """One sentence as words, with one tag per word (``None`` for unlabelled text).

    ``source`` is ``"path:line"`` of the sentence's first line, for error messages.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str = ""

    def __post_init__(self):
        if self.tags is not None and len(self.tags) != len(self.words):
            raise AladError(
                f"{self.source or 'sentence'}: {len(self.words)} words but {len(self.tags)} tags; give one tag per word"
            )


@dataclasses.dataclass(frozen=True)
class Answer:
    """An answer span: its text and the character offset where it starts in the context."""

    text: str
    start: int


@dataclasses.dataclass(frozen=True)
class QAExample:
    """An extractive-QA question; ``answers == ()`` means unanswerable (SQuAD v2 ``is_impossible``)."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    title: str = ""


# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class InMemoryFile:
    """A file already read into memory, e.g. standard input (``alad predict --file -``).

    Every reader takes one where it takes a path; ``name`` stands for the path in messages.
    """

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


Source = PathLike | InMemoryFile


def _looks_like_utf16(raw: bytes) -> str | None:
    """``"UTF-16"``/``"UTF-32"`` when ``raw`` starts with that byte-order mark, or when a third of its
    first KiB is NUL bytes (UTF-16 without a mark: every ASCII character has a NUL beside it); else None."""
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    head = raw[:1024]
    if len(head) >= 4 and head.count(b"\x00") * 3 >= len(head):
        return "UTF-16"
    return None


def decode_utf8(raw: bytes, path: Source) -> str:
    """``raw`` as text (a UTF-8 byte-order mark dropped), or one error line naming the file and the fix.

    The encoding is checked before anything guesses a file's format from its lines: a UTF-16 file
    read as UTF-8 would otherwise look like some other format and the error would name the wrong fix.
    """
    wide = _looks_like_utf16(raw)
    if wide:
        raise AladError(f"{path}: not valid UTF-8 (looks like {wide}; re-save as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise AladError(f"{path}:{line}: not valid UTF-8 ({err.reason}); re-encode the file as UTF-8") from None


def read_lines(path: Source) -> list[str]:
    """The file's lines without their line ends (``\\n`` or ``\\r\\n``), after :func:`decode_utf8`.

    Splits on ``\\n`` only: ``str.splitlines`` would also break inside tweets
    that contain U+2028 or U+0085.
    """
    if isinstance(path, InMemoryFile):
        raw = path.data
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise AladError(f"{path}: file not found; check the path") from None
        except IsADirectoryError:
            raise AladError(f"{path}: is a directory, expected a data file") from None
    lines = decode_utf8(raw, path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# --------------------------------------------------------------------------- tag schemes

SCHEMES = ("auto", "BIO", "IOB2", "IOB1", "BIOES", "none")
_PREFIX_TAG = re.compile(r"^([BIES])-(.+)$")
_LEGAL_PREFIXES = {"BIO": "BI", "IOB1": "BI", "BIOES": "BIES"}


def _split_tag(tag: str) -> tuple[str, str] | None:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``, anything else -> ``None``."""
    if tag == "O":
        return "O", ""
    match = _PREFIX_TAG.match(tag)
    return (match.group(1), match.group(2)) if match else None


def _first_violation(tag_seqs: Sequence[Sequence[str]], scheme: str) -> tuple[int, int, str] | None:
    """First ``(sentence, word, what was expected)`` where ``tag_seqs`` break ``scheme``; ``None`` if valid.

    BIO: ``I-T`` continues ``B-T``/``I-T``. IOB1: ``B-T`` only separates two
    adjacent ``T`` chunks, so it follows ``B-T``/``I-T``. BIOES: ``I-T``/``E-T``
    continue ``B-T``/``I-T``, and a ``B-T``/``I-T`` is always continued.
    """
    legal = _LEGAL_PREFIXES[scheme]
    for s, tags in enumerate(tag_seqs):
        prev, prev_type = "O", ""
        for w, tag in enumerate(tags):
            parts = _split_tag(tag)
            if parts is None or (parts[0] != "O" and parts[0] not in legal):
                allowed = " or ".join(f"{p}-TYPE" for p in legal)
                return s, w, f"tag {tag!r} is not 'O' or {allowed} (scheme {scheme})"
            prefix, typ = parts
            continues = prev in ("B", "I") and prev_type == typ
            rule = None
            if scheme == "BIO" and prefix == "I" and not continues:
                rule = "in BIO an I- tag must continue a B-/I- of the same type"
            elif scheme == "IOB1" and prefix == "B" and not continues:
                rule = "in IOB1 a B- tag only separates two adjacent chunks of the same type"
            elif scheme == "BIOES" and prefix in ("I", "E") and not continues:
                rule = "in BIOES I-/E- must continue a B-/I- of the same type"
            elif scheme == "BIOES" and prev in ("B", "I") and not (prefix in ("I", "E") and typ == prev_type):
                rule = "in BIOES a B-/I- must be followed by I-/E- of the same type"
            if rule:
                return s, w, f"{tag!r} follows {_tag_name(prev, prev_type)!r}, but {rule}"
            prev, prev_type = prefix, typ
        if scheme == "BIOES" and prev in ("B", "I"):
            open_chunk = _tag_name(prev, prev_type)
            return s, len(tags) - 1, f"sentence ends inside a chunk ({open_chunk!r}); in BIOES a chunk ends with E- or S-"
    return None


def _tag_name(prefix: str, typ: str) -> str:
    return "O" if prefix == "O" else f"{prefix}-{typ}"


def _resolve_scheme(tag_seqs: Sequence[Sequence[str]], scheme: str) -> tuple[str, tuple[int, int, str] | None]:
    """The concrete scheme for ``scheme`` (``"auto"`` detected) and the first violation of it, if any."""
    if scheme not in SCHEMES:
        raise AladError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme == "none":
        return "none", None
    if scheme == "IOB2":
        scheme = "BIO"
    if scheme != "auto":
        return scheme, _first_violation(tag_seqs, scheme)
    all_tags = {t for tags in tag_seqs for t in tags}
    prefixed = {t for t in all_tags if _split_tag(t) is not None}
    if not (prefixed - {"O"}):
        return "none", None  # no chunk tags at all: a POS-style tag set (or all 'O')
    if prefixed != all_tags:
        # mixed chunk and plain tags: report the first plain one as malformed under BIO
        return "BIO", _first_violation(tag_seqs, "BIO")
    if any(_split_tag(t)[0] in "ES" for t in prefixed if t != "O"):
        return "BIOES", _first_violation(tag_seqs, "BIOES")
    bio = _first_violation(tag_seqs, "BIO")
    if bio is None:
        return "BIO", None
    if _first_violation(tag_seqs, "IOB1") is None:
        return "IOB1", None
    return "BIO", bio


def detect_tag_scheme(tag_seqs: Iterable[Sequence[str]]) -> str:
    """``"BIO"``, ``"IOB1"``, ``"BIOES"`` or ``"none"`` (tags that are not chunk tags, e.g. POS).

    A sequence valid as both BIO and IOB1 (no chunk adjacent to one of its own
    type) is reported as BIO. Raises :class:`AladError` if no scheme fits.
    """
    tag_seqs = [list(t) for t in tag_seqs]
    scheme, violation = _resolve_scheme(tag_seqs, "auto")
    if violation is not None:
        s, w, what = violation
        raise AladError(f"sentence {s} word {w}: {what}; fix the tags or name the scheme")
    return scheme


# --------------------------------------------------------------------------- CoNLL

_COLUMN_SEP = re.compile(r"[ \t]+")
# On a line with a tab, only tabs separate columns: a word may hold spaces (UD's "100 000").
_TAB_SEP = re.compile(r" *\t[ \t]*")


def read_conll(path: Source, *, token_col: int = 0, tag_col: int | None = -1, scheme: str = "auto",
               skipped: list[str] | None = None) -> list[TaggedSentence]:
    """Column CoNLL (CoNLL-2003, WNUT): one word per line, columns split on tabs/spaces.

    A line holding a tab is split on tabs only, so a word may contain spaces
    (what ``alad predict --out`` writes for UD's multi-word numbers, "100 000").

    Blank or whitespace-only lines end a sentence; ``-DOCSTART-`` lines are
    skipped. Every word line must have the same number of columns as the first.
    Tags are validated against ``scheme`` ("BIO"/"IOB2", "IOB1", "BIOES",
    "auto" = detect from the file, "none" = any non-empty tag). ``tag_col=None``
    reads words only (tags ``None``): a one-column file of words is accepted, and
    the other columns of a wider one are ignored.

    A malformed sentence (a line with other columns, a tag the scheme forbids)
    stops the read with its file:line; with ``skipped`` (a list) it is dropped
    instead and its reason appended there.
    """
    lines = read_lines(path)
    if scheme not in SCHEMES:
        raise AladError(f"unknown tag scheme {scheme!r} for {path}; use one of {', '.join(SCHEMES)}")
    words: list[list[str]] = []
    tags: list[list[str]] = []
    line_numbers: list[list[int]] = []
    n_cols, cols_line = None, 0
    current: tuple[list[str], list[str], list[int]] = ([], [], [])
    docstarts = 0
    bad = False

    def flush():
        nonlocal current, bad
        if current[0] and not bad:
            words.append(current[0])
            tags.append(current[1])
            line_numbers.append(current[2])
        current, bad = ([], [], []), False

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            flush()
            continue
        stripped = line.strip(" \t")
        fields = (_TAB_SEP if "\t" in stripped else _COLUMN_SEP).split(stripped)
        if fields[0] == "-DOCSTART-":
            docstarts += 1
            flush()
            continue
        if n_cols is None:
            n_cols, cols_line = len(fields), lineno
            if tag_col is None:
                if not -n_cols <= token_col < n_cols:
                    raise AladError(f"{path}:{lineno}: line has {n_cols} column(s) but token_col={token_col}; "
                                    "give the word column's index")
            elif (not (-n_cols <= token_col < n_cols and -n_cols <= tag_col < n_cols)
                  or token_col % n_cols == tag_col % n_cols):
                raise AladError(
                    f"{path}:{lineno}: line has {n_cols} column(s) but token_col={token_col}, tag_col={tag_col}; "
                    "a CoNLL file needs distinct word and tag columns (use format 'text' for unlabelled text)"
                )
        elif len(fields) != n_cols:
            message = (f"{path}:{lineno}: expected {n_cols} columns (as on line {cols_line}), found {len(fields)} in "
                       f"{line!r}; every word line needs the same columns, sentences are separated by blank lines")
            if skipped is None:
                raise AladError(message)
            skipped.append(message)
            bad = True
            continue
        current[0].append(fields[token_col])
        current[1].append(fields[tag_col] if tag_col is not None else "")
        current[2].append(lineno)
    flush()
    if not words:
        raise AladError(f"{path}: no sentences found (empty file?); expected word and tag columns with blank lines between sentences")

    if tag_col is None:
        logger.info("%s: %d sentences (words only), %d -DOCSTART- lines skipped", path, len(words), docstarts)
        return [TaggedSentence(tuple(w), None, f"{path}:{ln[0]}") for w, ln in zip(words, line_numbers)]
    resolved, violation = _resolve_scheme(tags, scheme)
    while violation is not None:
        s, w, what = violation
        hint = " (or scheme='IOB1' if the file is IOB1)" if resolved == "BIO" else ""
        message = f"{path}:{line_numbers[s][w]}: {what}; fix the tag or pass scheme='none' to accept any tag{hint}"
        if skipped is None:
            raise AladError(message)
        skipped.append(message)
        del words[s], tags[s], line_numbers[s]
        resolved, violation = _resolve_scheme(tags, resolved)
    logger.info("%s: %d sentences, tag scheme %s, %d -DOCSTART- lines skipped", path, len(words), resolved, docstarts)
    return [
        TaggedSentence(tuple(w), tuple(t), f"{path}:{ln[0]}") for w, t, ln in zip(words, tags, line_numbers)
    ]


# --------------------------------------------------------------------------- CoNLL-U

_CONLLU_TAG_COLUMNS = {"upos": 3, "xpos": 4}
_RANGE_ID = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*$")
_EMPTY_NODE_ID = re.compile(r"^[0-9]+\.[1-9][0-9]*$")


def read_conllu(path: Source, *, tag: str = "upos", skipped: list[str] | None = None) -> list[TaggedSentence]:
    """Universal Dependencies CoNLL-U: the syntactic words of each sentence with their UPOS or XPOS.

    Multiword-token ranges (``1-2``) are skipped in favour of the words they
    contain, empty nodes (``1.1``) are skipped, comments are skipped. Word ids
    must run 1, 2, 3, ... in each sentence and every line has 10 tab-separated
    columns. A malformed sentence stops the read with its file:line; with
    ``skipped`` (a list) it is dropped instead and its reason appended there.
    """
    if tag not in _CONLLU_TAG_COLUMNS:
        raise AladError(f"unknown CoNLL-U tag column {tag!r} for {path}; use 'upos' or 'xpos'")
    column = _CONLLU_TAG_COLUMNS[tag]
    lines = read_lines(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    first_line = 0
    ranges = empty_nodes = 0
    bad = False

    def flush():
        nonlocal words, tags, bad
        if words and not bad:
            sentences.append(TaggedSentence(tuple(words), tuple(tags), f"{path}:{first_line}"))
        words, tags, bad = [], [], False

    def malformed(message: str) -> None:
        nonlocal bad
        if skipped is None:
            raise AladError(message)
        skipped.append(message)
        bad = True

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            flush()
            continue
        if line.startswith("#") or bad:
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            malformed(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, found {len(fields)}; "
                      "check that columns are separated by tabs and unused ones hold '_'")
            continue
        word_id = fields[0]
        if _RANGE_ID.match(word_id):
            ranges += 1
            continue
        if _EMPTY_NODE_ID.match(word_id):
            empty_nodes += 1
            continue
        expected = len(words) + 1
        if not word_id.isdigit() or int(word_id) != expected:
            malformed(f"{path}:{lineno}: word id {word_id!r} where {expected} was expected; "
                      "ids must run 1, 2, 3, ... in each sentence, with a blank line between sentences")
            continue
        value = fields[column]
        if value == "_":
            fix = "use tag='upos'" if tag == "xpos" else "the file has no part-of-speech tags"
            malformed(f"{path}:{lineno}: {tag.upper()} column is '_' (not annotated); {fix}")
            continue
        if not words:
            first_line = lineno
        words.append(fields[1])
        tags.append(value)
    flush()
    if not sentences:
        raise AladError(f"{path}: no sentences found (empty file?); expected CoNLL-U word lines")
    logger.info(
        "%s: %d sentences; skipped %d multiword-token ranges and %d empty nodes", path, len(sentences), ranges, empty_nodes
    )
    return sentences


@dataclasses.dataclass(frozen=True)
class ConlluSentence:
    """One CoNLL-U sentence as written, for labelling it and writing it back (``alad predict``).

    ``lines`` are the sentence's lines as read (comments, multiword-token ranges and empty nodes
    included); ``word_lines`` the indices into ``lines`` of its syntactic words, one per word.
    """

    lines: tuple[str, ...]
    word_lines: tuple[int, ...]
    source: str = ""

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.lines[i].split("\t")[1] for i in self.word_lines)

    def filled(self, labels: Sequence[str], column: str = "upos") -> list[str]:
        """The sentence's lines with ``column`` (``upos`` or ``xpos``) of word ``i`` set to ``labels[i]``;
        every other line and column as read."""
        if len(labels) != len(self.word_lines):
            raise AladError(f"{self.source}: {len(self.word_lines)} words but {len(labels)} labels")
        index = _CONLLU_TAG_COLUMNS[column]
        lines = list(self.lines)
        for row, label in zip(self.word_lines, labels):
            fields = lines[row].split("\t")
            fields[index] = label
            lines[row] = "\t".join(fields)
        return lines


def read_conllu_sentences(path: Source) -> list[ConlluSentence]:
    """The sentences of a CoNLL-U file with every line kept, annotated or not (``_`` columns are fine).

    Checks what labelling needs: 10 tab-separated columns on every token line, and word ids
    running 1, 2, 3, ... in each sentence (ranges ``1-2`` and empty nodes ``1.1`` kept as they are).
    Comments before a sentence belong to it; a malformed line stops the read with its file:line.
    """
    sentences: list[ConlluSentence] = []
    lines: list[str] = []
    word_lines: list[int] = []
    first_line = 0

    def flush():
        nonlocal lines, word_lines
        if word_lines:
            sentences.append(ConlluSentence(tuple(lines), tuple(word_lines), f"{path}:{first_line}"))
        elif lines:
            where = f"{path}:{first_line}"
            raise AladError(f"{where}: comments without a sentence after them; remove them or add the sentence")
        lines, word_lines = [], []

    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            flush()
            continue
        if not lines:
            first_line = lineno
        if not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) != 10:
                raise AladError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, found {len(fields)}; "
                                "check that columns are separated by tabs and unused ones hold '_'")
            word_id = fields[0]
            if not (_RANGE_ID.match(word_id) or _EMPTY_NODE_ID.match(word_id)):
                expected = len(word_lines) + 1
                if not word_id.isdigit() or int(word_id) != expected:
                    raise AladError(f"{path}:{lineno}: word id {word_id!r} where {expected} was expected; "
                                    "ids must run 1, 2, 3, ... in each sentence, with a blank line between sentences")
                word_lines.append(len(lines))
        lines.append(line)
    flush()
    if not sentences:
        raise AladError(f"{path}: no sentences found (empty file?); expected CoNLL-U word lines")
    return sentences


# --------------------------------------------------------------------------- plain text


def read_text(path: Source) -> list[TaggedSentence]:
    """One sentence per line, words split on whitespace, no tags. Blank lines are skipped (and counted)."""
    sentences = []
    blank = 0
    for lineno, line in enumerate(read_lines(path), 1):
        words = line.split()
        if not words:
            blank += 1
            continue
        sentences.append(TaggedSentence(tuple(words), None, f"{path}:{lineno}"))
    if not sentences:
        raise AladError(f"{path}: no sentences found (empty file?); expected one sentence per line")
    if blank:
        logger.info("%s: %d sentences, %d blank lines skipped", path, len(sentences), blank)
    return sentences


# --------------------------------------------------------------------------- SQuAD


def _field(obj, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise AladError(f"{where}: missing key {key!r}; expected SQuAD JSON (data -> paragraphs -> qas)")
    value = obj[key]
    if not isinstance(value, kind):
        raise AladError(f"{where}: {key!r} should be a {kind.__name__}, found {type(value).__name__}")
    return value


def check_answers(qid: str, context: str, answers: Iterable[Answer], where: str) -> tuple[Answer, ...]:
    """The answers, after checking each one's text sits at its ``start`` in ``context``."""
    answers = tuple(answers)
    for answer in answers:
        found = context[answer.start : answer.start + len(answer.text)]
        if answer.start < 0 or found != answer.text:
            raise AladError(
                f"{where}: question {qid!r}: answer {answer.text!r} is not at answer_start={answer.start} "
                f"of its context (found {found!r}); fix answer_start"
            )
    return answers


def read_squad(path: Source) -> list[QAExample]:
    """SQuAD v1.1 / v2.0 JSON, unanswerable questions kept with ``answers == ()``.

    Every ``answer_start`` is checked against the context text, and question
    ids must be unique (predictions are keyed by id).
    """
    text = "\n".join(read_lines(path))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise AladError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); expected SQuAD JSON") from None
    examples: list[QAExample] = []
    seen: set[str] = set()
    for a, article in enumerate(_field(doc, "data", list, str(path))):
        where_a = f"{path}: data[{a}]"
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, where_p)
            for q, qa in enumerate(_field(paragraph, "qas", list, where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qid = str(_field(qa, "id", (str, int), where_q))
                question = _field(qa, "question", str, where_q)
                if qid in seen:
                    raise AladError(f"{where_q}: duplicate question id {qid!r}; ids must be unique")
                seen.add(qid)
                impossible = bool(qa.get("is_impossible", False))
                raw_answers = [] if impossible else _field(qa, "answers", list, where_q)
                if not impossible and not raw_answers:
                    raise AladError(
                        f"{where_q}: question {qid!r} has no answers and is not marked is_impossible; "
                        "add answers or set \"is_impossible\": true"
                    )
                answers = [
                    Answer(_field(ans, "text", str, where_q), _field(ans, "answer_start", int, where_q))
                    for ans in raw_answers
                ]
                examples.append(QAExample(qid, question, context, check_answers(qid, context, answers, where_q), title))
    if not examples:
        raise AladError(f"{path}: no questions found; expected SQuAD JSON (data -> paragraphs -> qas)")
    unanswerable = sum(not e.answers for e in examples)
    logger.info("%s: %d questions (%d unanswerable)", path, len(examples), unanswerable)
    return examples
