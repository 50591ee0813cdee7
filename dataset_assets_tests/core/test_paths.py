import pytest

from dataset_assets.core.paths import escape_reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty names"),
        ("/etc/passwd", "absolute paths"),
        ("\\windows\\system32", "absolute paths"),
        ("C:/windows.jpg", "absolute paths"),
        ("C:relative-to-drive.jpg", "absolute paths"),
        ("..", "'..' would escape"),
        ("../up.tar", "'..' would escape"),
        ("seq/../../up.tar", "'..' would escape"),
        ("seq\\..\\..\\up.tar", "'..' would escape"),
    ],
)
def test_names_that_could_land_outside_their_folder_are_refused_with_the_reason(name: str, reason: str) -> None:
    found = escape_reason(name)

    assert found is not None and found.startswith(reason)


@pytest.mark.parametrize("name", ["shards-0000.tar", "seq_000/f0001.jpg", "a..b.json", "..hidden", "dir/", "time:12"])
def test_names_that_stay_inside_their_folder_pass(name: str) -> None:
    assert escape_reason(name) is None
