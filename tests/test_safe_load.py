"""load_plain: tensors and plain data load; other objects are refused without running; junk is named."""

import pytest
import torch

from dalle_dist.safe_load import NotTorchFileError, UnsafeFileError, load_plain


def test_tensors_and_plain_containers_load(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2), "step": 3, "names": ["a", "b"]}, path)
    data = load_plain(path)
    assert data["step"] == 3 and data["names"] == ["a", "b"] and torch.equal(data["w"], torch.ones(2))


class Payload:
    """Any class: unpickling it means importing and calling code named by the file."""

    def __eq__(self, other):
        return isinstance(other, Payload)


def test_other_objects_are_refused_and_named_unless_allowed(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(UnsafeFileError, match=r"GLOBAL \S*Payload"):
        load_plain(path)
    assert load_plain(path, allowed=[Payload]) == {"x": Payload()}


@pytest.mark.parametrize("content", [b"not a torch file\n", b""])
def test_junk_is_not_a_torch_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(NotTorchFileError):
        load_plain(path)


def test_truncated_file_is_not_a_torch_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(NotTorchFileError):
        load_plain(path)


def test_an_unreadable_path_is_not_a_torch_file(tmp_path):
    with pytest.raises(NotTorchFileError):
        load_plain(tmp_path)  # a folder: torch.load's OSError becomes the same error
