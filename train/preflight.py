"""Check every input a run will read before its first training step.

The corpus of stage 1 is read only after stage 0 and the baselines have
trained (hours with BERT-base), and models come from the Hub: a missing file
or an unreachable model must stop the run at start-up, in one line that names
the config key and the path. Contents are still checked by the readers when
they read (``path:line`` errors); this module checks that everything is there.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from alad_train.config import Config, dump_toml
from alad_jax.data import stream
from alad_jax.data.sources import CORPUS_FORMATS, FILE_FORMATS, resolve_source
from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_train import align, cases, own_teacher, plan
from alad_train.workdir import config_conflict

_WEIGHTS = (hub.SAFETENSORS, hub.SAFETENSORS_INDEX, hub.FLAX_MSGPACK)


def needs_corpus(cfg: Config) -> bool:
    """Whether a chosen case needs stage 1, the only reader of the corpus."""
    return any(c.aligned for c in cases.selected(cfg.cases))


def input_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, path) of every file the run reads: task splits (file formats) and the stage-1 corpus
    (when a chosen case needs stage 1)."""
    files = []
    if cfg.data.format in FILE_FORMATS:
        for split in ("train", "dev", "test"):
            source = getattr(cfg.data, split)
            if split != "train" and source == "hash":  # a split of the train file, nothing to read
                continue
            files.append((f"data.{split}", source))
    if needs_corpus(cfg) and not _streamed_corpus(cfg):
        files += [(f"corpus.paths[{i}]", source) for i, source in enumerate(cfg.corpus.paths)]
    return files


def _streamed_corpus(cfg: Config) -> bool:
    """A stage-1 corpus read as a stream (a Hub dataset or globs of shards: checked by
    :func:`alad_jax.data.stream.source_of`), or none at all (``stages.align.from``)."""
    return bool(cfg.stages.align.from_) or cfg.corpus.format == "hf" or any(glob.has_magic(p) for p in cfg.corpus.paths)


def _missing_file(key: str, source: str) -> str | None:
    """Why ``source`` cannot be read (None when it can)."""
    try:
        path = Path(resolve_source(source))
    except AladError as e:  # packaged:NAME whose package is not installed
        return f"{key} = {source!r}: {e}"
    if path.is_dir():
        return f"{key} = {source!r} is a directory; give a file"
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        what = " (the stage-1 alignment corpus, see corpus.format)" if key.startswith("corpus.") else ""
        return f"{key} = {source!r}: no such file{where}{what}"
    return None


def check_model(key: str, name_or_path: str, *, cache_dir: str | None = None) -> None:
    """``teacher``/``student`` resolve to a directory with config.json, weights and tokenizer files.

    A Hub id is fetched here (config, weights and tokenizer files only: what
    the run needs anyway), so an offline machine fails now, not at stage 0.
    """
    try:
        model_dir = hub.resolve_model_dir(name_or_path, cache_dir=cache_dir)
        hub.read_config(model_dir)
        if not any((model_dir / name).is_file() for name in _WEIGHTS):
            hub.read_checkpoint(model_dir)  # raises with what is there and how to convert it
        if not any((model_dir / name).is_file() for name in hub.TOKENIZER_FILES):
            raise AladError(f"{model_dir}: no tokenizer files ({', '.join(hub.TOKENIZER_FILES)})")
    except AladError as e:
        raise AladError(f"config key '{key}' = {name_or_path!r}: {e}") from None


def _check_corpus(cfg: Config) -> None:
    """The stage-1 corpus's settings: an adapter to start from, a stream, or files of a known format."""
    if cfg.stages.align.from_:
        for window in cfg.windows:
            align.resolve_from(cfg.stages.align.from_, window)
    elif _streamed_corpus(cfg):
        stream.check_hub(stream.source_of(cfg.corpus))
    elif cfg.corpus.format not in CORPUS_FORMATS:
        raise AladError(f"config key 'corpus.format' is {cfg.corpus.format!r}; use {' or '.join(CORPUS_FORMATS)}")
    elif not cfg.corpus.paths:
        raise AladError("config key 'corpus.paths' is empty; stage 1 needs at least one corpus file")


def preflight(cfg: Config) -> None:
    """Raise one :class:`AladError` line if any input of ``cfg``'s run is missing.

    Checked: the case names (config key ``cases``), the task's data files (unless
    ``data.format = "hf"``, whose splits the task loads by name before stage 0),
    the stage-1 corpus files and their format (when a chosen case needs stage 1),
    and the teacher and student models with their tokenizers.
    """
    if needs_corpus(cfg):
        _check_corpus(cfg)
    problems = [p for key, source in input_files(cfg) if (p := _missing_file(key, source))]
    if problems:
        raise AladError(f"missing input{'s' if len(problems) > 1 else ''} (checked before any training): "
                        + "; ".join(problems))
    cache_dir = cfg.cache_dir or None
    check_model("teacher", cfg.teacher, cache_dir=cache_dir)
    if cfg.student != cfg.teacher:
        check_model("student", cfg.student, cache_dir=cache_dir)


def check_run(cfg: Config, workdir: Path) -> str:
    """``alad run --check``: the start-up checks, then the plan and what ``workdir`` already holds.

    Trains nothing and writes nothing; raises the :class:`AladError` the run would raise at start-up.
    """
    preflight(cfg)
    teacher = own_teacher.teacher_case(cfg)
    steps = plan.make_plan(cfg, teacher)
    workdir = Path(workdir)
    progress_file = workdir / "progress.json"
    progress = json.loads(progress_file.read_text(encoding="utf-8")) if progress_file.is_file() else {}
    lines = [f"config: resolved ({len(dump_toml(cfg).splitlines())} lines of TOML); inputs and models: found",
             f"teacher: {cfg.teacher}: {teacher.about}",
             f"workdir: {workdir} ({'a run with ' + str(len(progress)) + ' finished steps' if progress else 'new'})"]
    conflict = config_conflict(workdir, cfg)
    if conflict:
        lines.append(f"warning: {conflict}: alad run would refuse it (same config to resume, --restart or another "
                     "--workdir)")
    lines.append(plan.format_plan(cfg, steps, progress, workdir))
    return "\n".join(lines)
