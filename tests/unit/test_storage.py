import os
import uuid

import pytest

from raygen.errors import StorageError
from raygen.storage import Location, is_uri, local_copy


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return Location(tmp_path / "store")
    return Location(f"{request.getfixturevalue('s3')}/{uuid.uuid4().hex[:8]}")


def test_files_and_directories_behave_alike_on_disk_and_in_s3(base, tmp_path):
    assert not base.exists() and base.iterdir() == [] and base.files() == []
    (base / "a" / "x.json").write_text('{"n": 1}')
    (base / "a" / "y.bin").write_bytes(b"\x00\xff")
    (base / "b.txt").write_text("é")
    assert (base / "a").is_dir() and (base / "b.txt").is_file() and not (base / "b.txt").is_dir()
    assert [p.name for p in base.iterdir()] == ["a", "b.txt"]
    assert base.files() == [("a/x.json", 8), ("a/y.bin", 2), ("b.txt", 2)]
    assert (base / "b.txt").read_text() == "é" and (base / "a" / "y.bin").read_bytes() == b"\x00\xff"
    (base / "b.txt").write_text("replaced")  # whole, in place
    assert (base / "b.txt").read_text() == "replaced"
    # A directory up and back down.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("deep")
    (src / "g").write_text("top")
    (base / "up").upload(src)
    assert (base / "up").files() == [("g", 3), ("sub/f", 4)]
    down = (base / "up").download(tmp_path / "down")
    assert (down / "sub" / "f").read_text() == "deep"
    (base / "a").delete()
    (base / "nothing").delete()  # absent: nothing to do
    assert [p.name for p in base.iterdir()] == ["b.txt", "up"]
    with pytest.raises(StorageError, match="does not exist"):
        (base / "a" / "x.json").read_text()
    assert str(base / "a") == f"{base}/a" and Location(str(base)) == base


def test_uris_and_paths():
    assert is_uri("s3://b/k") and is_uri("gs://b") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert Location("file:///tmp/x").is_local and Location("/tmp/x/").uri == "/tmp/x"
    assert Location("s3://bucket/a/").uri == "s3://bucket/a" and Location("s3://bucket/a/b").name == "b"
    with pytest.raises(StorageError, match="not on a local disk"):
        _ = Location("s3://bucket/a").local_path
    assert os.fspath(Location("/tmp/x")) == "/tmp/x"
    with pytest.raises(StorageError, match="not on a local disk"):
        os.fspath(Location("s3://bucket/a"))
    with pytest.raises(StorageError, match="cannot open nosuch://x"):
        Location("nosuch://x").exists()


def test_a_remote_directory_is_copied_once_and_only_when_complete(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGEN_CACHE", str(tmp_path / "cache"))
    remote = Location(f"{s3}/{uuid.uuid4().hex[:8]}/v1")
    (remote / "weights").write_text("w")
    with pytest.raises(StorageError, match="incomplete or missing"):
        local_copy(remote, "card.json")  # its marker is not there yet: never cache a half-written version
    (remote / "card.json").write_text("{}")
    got = local_copy(remote, "card.json")
    assert (got / "weights").read_text() == "w" and got.is_relative_to(tmp_path / "cache")
    (remote / "weights").write_text("changed")  # does not happen to a registry version; shows the cache is used
    assert (local_copy(remote, "card.json") / "weights").read_text() == "w"
