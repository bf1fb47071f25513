"""Every file the project writes goes through attnscope.files: a write that fails (a full disk,
here simulated at each step) leaves the old file whole, no temporary beside it, and one OSError
naming the file; a command's outputs land all at once or not at all."""
import errno
import os

import pytest

from attnscope import files


def full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch, step):
    path = tmp_path / "turning_points.md"
    path.write_text("old table\n")
    if step == "write":
        real_open = open

        class Torn:  # writes a 4096-byte prefix, then the disk is full (what plain open("w") tore)
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, b):
                self.f.write(b[:4096])
                full_disk()

            def flush(self):
                pass
        monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Torn(real_open(p, mode, *a, **k))
                            if "w" in mode else real_open(p, mode, *a, **k))
    else:
        monkeypatch.setattr(os, step, full_disk)
    with pytest.raises(OSError, match=r"cannot write '.*turning_points.md': No space left on device; its old "
                                      r"contents \(if any\) are kept") as e:
        files.write_atomic(path, "x" * 10000)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert path.read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turning_points.md"]


def test_a_write_keeps_the_umask_mode_and_replaces_whole(tmp_path):
    path = tmp_path / "summary.json"
    files.write_atomic(path, "{}")
    files.write_atomic(path, b"[1]")
    assert path.read_bytes() == b"[1]"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_output_folder_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "turning_points.md").write_text("old\n")
    (out / "entropy.png").write_bytes(b"old png")
    with pytest.raises(RuntimeError, match="the third figure failed"):
        with files.output_folder(out) as stage:
            files.write_atomic(os.path.join(stage, "turning_points.md"), "new\n")
            raise RuntimeError("the third figure failed")
    assert (out / "turning_points.md").read_text() == "old\n" and (out / "entropy.png").read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    with files.output_folder(out) as stage:
        files.write_atomic(os.path.join(stage, "turning_points.md"), "new\n")
    assert (out / "turning_points.md").read_text() == "new\n" and (out / "entropy.png").read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_paper_figures_save_whole(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnscope.figure import PaperFigure
    fig = plt.figure(FigureClass=PaperFigure)
    fig.add_subplot().plot([0, 1])
    fig.savefig(tmp_path / "a.png")
    fig.savefig(str(tmp_path / "b"))  # matplotlib's rule: the default format's extension
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match=r"cannot write '.*a.png': No space left on device"):
        fig.savefig(tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    plt.close(fig)
