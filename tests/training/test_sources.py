"""Dataset lookup order and checksums (no network: downloads are exercised on a local URL)."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.data import sources

KEY = "ett/ETTh1.csv"
SHARED_MULTI30K = Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No data folder, an empty cache, and downloads allowed (from the tests' own mirror)."""
    monkeypatch.delenv("SEQSERVE_DATA_DIR", raising=False)
    monkeypatch.delenv("SEQSERVE_OFFLINE", raising=False)
    monkeypatch.setenv("SEQSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _fake_file(folder: Path, key: str, content: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = folder / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    monkeypatch.setitem(sources.SHA256, key, hashlib.sha256(content).hexdigest())
    return path


def test_data_dir_comes_first(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fake_file(clean_env / "data", KEY, b"date,OT\n", monkeypatch)
    monkeypatch.setenv("SEQSERVE_DATA_DIR", str(clean_env / "data"))
    assert sources.dataset_file(KEY) == path


def test_data_dir_missing_file_is_an_error(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQSERVE_DATA_DIR", str(clean_env / "empty"))
    with pytest.raises(sources.DatasetError, match="not in SEQSERVE_DATA_DIR"):
        sources.dataset_file(KEY)


def test_shared_data_beside_the_repository(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_root = clean_env / "checkout" / "seqserve"
    fake_root.mkdir(parents=True)
    path = _fake_file(clean_env / "checkout" / "shared" / "data", KEY, b"x\n", monkeypatch)
    monkeypatch.setattr(sources, "REPO_ROOT", fake_root)
    assert sources.dataset_file(KEY) == path


def test_checksum_mismatch_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_file(clean_env / "data", KEY, b"good\n", monkeypatch)
    (clean_env / "data" / KEY).write_bytes(b"tampered\n")
    monkeypatch.setenv("SEQSERVE_DATA_DIR", str(clean_env / "data"))
    with pytest.raises(sources.DatasetError, match="does not match"):
        sources.dataset_file(KEY)


def test_unknown_file_lists_the_known_ones(clean_env: Path) -> None:
    with pytest.raises(sources.DatasetError, match=r"ett/ETTh1\.csv"):
        sources.dataset_file("ett/nope.csv")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _mirror(folder: Path) -> Iterator[str]:
    """A loopback HTTP server publishing `folder`; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_into_cache_checks_sha(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = clean_env / "www"
    _fake_file(served, KEY, b"date,OT\n2016-07-01 00:00:00,1.0\n", monkeypatch)
    monkeypatch.setattr(sources, "local_dirs", lambda: [])
    with _mirror(served) as base:
        monkeypatch.setitem(sources.SOURCES, "ett", base + "/ett/{name}")
        path = sources.dataset_file(KEY)
        assert path == clean_env / "cache" / KEY
        assert path.read_bytes().startswith(b"date,OT")
        # A corrupted mirror: the download is refused and nothing is left in the cache.
        shutil.rmtree(clean_env / "cache")
        (served / KEY).write_bytes(b"corrupt\n")
        with pytest.raises(sources.DatasetError, match="does not match"):
            sources.dataset_file(KEY)
        assert not any((clean_env / "cache").rglob("*.csv"))


@pytest.mark.skipif(not SHARED_MULTI30K.is_dir(), reason="../shared/data/multi30k not here")
def test_multi30k_download_with_the_real_checksums(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Multi30k reader downloads through a mirror laid out as the public repository, with
    the pinned sha256 of the real files, and refuses a file whose bytes changed."""
    from training.data import parallel

    raw = clean_env / "www" / "data" / "task1" / "raw"
    raw.mkdir(parents=True)
    for lang in ("de", "en"):
        shutil.copy(SHARED_MULTI30K / f"test_2016_flickr.{lang}.gz", raw)
    monkeypatch.setattr(sources, "local_dirs", lambda: [])
    with _mirror(clean_env / "www") as base:
        monkeypatch.setitem(sources.SOURCES, "multi30k", base + "/data/task1/raw/{name}")
        pairs = parallel.multi30k("de", "en", "test_2016_flickr")
        assert len(pairs) == 1000
        assert (clean_env / "cache" / "multi30k" / "test_2016_flickr.de.gz").is_file()
        # Served again from the cache, with no mirror needed.
        monkeypatch.setitem(sources.SOURCES, "multi30k", "http://127.0.0.1:9/{name}")
        assert parallel.multi30k("de", "en", "test_2016_flickr") == pairs

        shutil.rmtree(clean_env / "cache")
        monkeypatch.setitem(sources.SOURCES, "multi30k", base + "/data/task1/raw/{name}")
        with gzip.open(raw / "test_2016_flickr.en.gz", "ab") as f:
            f.write(b"one more line\n")
        with pytest.raises(sources.DatasetError, match="does not match"):
            parallel.multi30k("de", "en", "test_2016_flickr")
        assert not (clean_env / "cache" / "multi30k" / "test_2016_flickr.en.gz").exists()


def test_real_shared_data_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQSERVE_DATA_DIR", raising=False)
    if not sources.local_dirs():
        pytest.skip("no ../shared/data beside this checkout")
    path = sources.dataset_file("ett/ETTh1.csv", allow_download=False)
    assert path.read_text().splitlines()[0] == "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"
