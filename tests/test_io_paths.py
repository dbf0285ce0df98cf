"""Names from data files that escape the dataset folder are refused by name (medpipe.io.paths)."""

import os

import pytest

from medpipe.io.paths import PathEscapeError, inside, member_name


@pytest.mark.parametrize("name", ["../x.png", "masks/../../x.png", "/etc/passwd", "C:/x.png", "a\\..\\b", "a\x00b", ""])
def test_escaping_names_are_refused_naming_source_and_name(name):
    with pytest.raises(PathEscapeError, match="index.json"):
        member_name(name, "index.json")


def test_plain_names_are_normalised():
    assert member_name("images/./a.png", "index.json") == "images/a.png"
    assert member_name("./masks/b--c_0.png", "index.json") == "masks/b--c_0.png"


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    (root / "masks").mkdir(parents=True)
    outside.mkdir()
    (outside / "s.png").write_bytes(b"x")
    (root / "masks" / "ok.png").write_bytes(b"y")
    os.symlink(outside / "s.png", root / "masks" / "link.png")
    assert inside(root, "masks/ok.png", "idx") == (root / "masks" / "ok.png").resolve()
    with pytest.raises(PathEscapeError, match="link.png"):
        inside(root, "masks/link.png", "idx")
