"""Server paths from a browser: only inside the operator's data roots, after `..` and symlinks are resolved."""
import os

import pytest

from dashboard.server_paths import DATA_ROOTS_ENV, PathRefused, check_server_path, data_roots, split_spec


@pytest.fixture
def shared(tmp_path):
    root = tmp_path / "shared"
    (root / "val" / "cat").mkdir(parents=True)
    (tmp_path / "private").mkdir()
    return root.resolve()


def test_a_folder_inside_a_root_is_accepted_and_resolved(shared):
    assert check_server_path(f"imagefolder:{shared}/val/../val", (shared,)) == f"imagefolder:{shared / 'val'}"
    assert check_server_path(f"torchvision:CIFAR10:{shared}", (shared,)) == f"torchvision:CIFAR10:{shared}"
    assert check_server_path(f"hf:{shared}/val", (shared,)) == f"hf:{shared / 'val'}"


@pytest.mark.parametrize("tail", ["/../private", "/../../etc", "/val/../../private"])
def test_dot_dot_cannot_step_outside(shared, tail):
    with pytest.raises(PathRefused, match="outside the folders this server shares"):
        check_server_path(f"imagefolder:{shared}{tail}", (shared,))


def test_a_symlink_out_of_the_root_is_refused(shared, tmp_path):
    (shared / "escape").symlink_to(tmp_path / "private")
    with pytest.raises(PathRefused, match="outside"):
        check_server_path(f"text:{shared}/escape", (shared,))


def test_a_sibling_with_the_root_as_name_prefix_is_refused(shared, tmp_path):
    (tmp_path / "shared-but-not").mkdir()
    with pytest.raises(PathRefused, match="outside"):
        check_server_path(f"idx:{tmp_path}/shared-but-not", (shared,))


def test_no_roots_means_paths_are_off_and_the_message_says_how_to_enable(shared):
    with pytest.raises(PathRefused, match=f"shares no data folders.*{DATA_ROOTS_ENV}"):
        check_server_path(f"imagefolder:{shared}", ())


@pytest.mark.parametrize("spec, message", [
    ("imagefolder:data/val", "relative path"),
    ("imagefolder:", "names no folder"),
    ("torchvision:CIFAR10:", "names no folder"),
    ("file:/etc/passwd", "not a path spec"),
    ("os:system", "not a path spec"),
])
def test_malformed_specs_get_one_line(shared, spec, message):
    with pytest.raises(PathRefused, match=message) as err:
        check_server_path(spec, (shared,))
    assert "\n" not in str(err.value)


def test_split_spec_keeps_the_torchvision_class():
    assert split_spec("torchvision:MNIST:/d") == ("torchvision", "torchvision:MNIST:", "/d")


def test_data_roots_reads_the_environment(shared, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, f"{shared}{os.pathsep}{tmp_path / 'private'}{os.pathsep}")
    assert data_roots() == (shared, (tmp_path / "private").resolve())
    monkeypatch.delenv(DATA_ROOTS_ENV)
    assert data_roots() == ()


@pytest.mark.parametrize("entry", ["relative/dir", "/no/such/folder/anywhere"])
def test_a_bad_root_setting_is_the_operators_to_fix(entry, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, entry)
    with pytest.raises(PathRefused, match="operator must fix"):
        data_roots()
