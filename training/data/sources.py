"""Where benchmark datasets come from: a local folder, or a checked, cached download.

Lookup order for a file such as `ett/ETTh1.csv`:
1. `$SEQSERVE_DATA_DIR/ett/ETTh1.csv` when SEQSERVE_DATA_DIR is set (an error if it is missing);
2. `../shared/data/ett/ETTh1.csv` beside the repository root, when that folder exists;
3. the download cache (`$SEQSERVE_CACHE_DIR`, default `~/.cache/seqserve/data`), filled from the
   dataset's public source on first use.
Every file is checked against the sha256 below, wherever it comes from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SOURCES = {
    "ett": "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}",
    "multi30k": "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}",
}

# A checksum per line, under the name it checks.
# fmt: off
SHA256 = {
    "ett/ETTh1.csv":
        "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ett/ETTh2.csv":
        "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    "ett/ETTm1.csv":
        "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
    "ett/ETTm2.csv":
        "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd",
    "multi30k/test_2016_flickr.de.gz":
        "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "multi30k/test_2016_flickr.en.gz":
        "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "multi30k/test_2016_flickr.fr.gz":
        "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "multi30k/test_2017_flickr.de.gz":
        "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "multi30k/test_2017_flickr.en.gz":
        "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "multi30k/test_2017_flickr.fr.gz":
        "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "multi30k/test_2017_mscoco.de.gz":
        "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "multi30k/test_2017_mscoco.en.gz":
        "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "multi30k/test_2017_mscoco.fr.gz":
        "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "multi30k/test_2018_flickr.de.gz":
        "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "multi30k/test_2018_flickr.en.gz":
        "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "multi30k/test_2018_flickr.fr.gz":
        "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "multi30k/train.de.gz":
        "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "multi30k/train.en.gz":
        "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "multi30k/train.fr.gz":
        "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "multi30k/val.de.gz":
        "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "multi30k/val.en.gz":
        "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "multi30k/val.fr.gz":
        "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}
# fmt: on


class DatasetError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, or fails its checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_dirs() -> list[Path]:
    """Folders searched before the cache, in order."""
    if env := os.environ.get("SEQSERVE_DATA_DIR"):
        return [Path(env)]
    shared = REPO_ROOT.parent / "shared" / "data"
    return [shared] if shared.is_dir() else []


def cache_dir() -> Path:
    env = os.environ.get("SEQSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "seqserve" / "data"


def _verify(key: str, path: Path) -> Path:
    expected = SHA256[key]
    actual = sha256_of(path)
    if actual != expected:
        raise DatasetError(f"{path}: sha256 {actual} does not match the expected {expected}")
    return path


def download(key: str, dest: Path) -> Path:
    """Fetch `key` from its public source into `dest`, atomically, checking its sha256."""
    group, name = key.split("/", 1)
    url = SOURCES[group].format(name=name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        _verify(key, Path(tmp))
        os.replace(tmp, dest)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"could not download {url}: {err}") from err
    return dest


def dataset_file(key: str, allow_download: bool = True) -> Path:
    """The local path of a known dataset file such as "ett/ETTh1.csv", checked."""
    if key not in SHA256:
        known = ", ".join(sorted(SHA256))
        raise DatasetError(f"unknown dataset file {key!r}; known: {known}")
    dirs = local_dirs()
    for folder in dirs:
        if (folder / key).is_file():
            return _verify(key, folder / key)
    if os.environ.get("SEQSERVE_DATA_DIR"):
        raise DatasetError(f"{key} is not in SEQSERVE_DATA_DIR={dirs[0]}")
    cached = cache_dir() / key
    if cached.is_file():
        return _verify(key, cached)
    if not allow_download or os.environ.get("SEQSERVE_OFFLINE"):
        why = "SEQSERVE_OFFLINE is set" if allow_download else "downloads are off"
        raise DatasetError(
            f"{key} is not available locally ({', '.join(map(str, dirs)) or 'no data folder'}, "
            f"or the cache {cache_dir()}) and {why}"
        )
    return download(key, cached)
