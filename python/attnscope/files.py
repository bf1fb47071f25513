"""Every file attnscope writes from Python goes through here: written beside its final name,
flushed to the disk, then renamed over it, so a full disk, a kill or an error leaves the old file
whole (or no file) and never a torn one; a failure raises one OSError naming the file.
(Trace and dataset files are written the same way by the C++ core.)"""
import contextlib
import os
import shutil
import tempfile

__all__ = ["atomic_path", "write_atomic", "output_folder"]


def _fail(path, e):
    reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [""])[0]
    err = OSError(f"cannot write {path!r}: {reason or type(e).__name__}; its old contents (if any) are kept")
    err.errno = getattr(e, "errno", None)  # (set after: OSError's own str would repeat the errno and name)
    return err


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` for a writer that takes a file name (savefig,
    torch.jit.save); when the block ends cleanly the file is fsynced and renamed to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"  # the core's name for its temporaries too (removed if stale)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666))  # the umask's mode, as open() gives
    except OSError as e:
        raise _fail(path, e) from e
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _fail(path, e) from e
        raise


def write_atomic(path, data):
    """Writes `data` (str, as UTF-8, or bytes) to `path` whole or not at all; returns the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
    return os.fspath(path)


@contextlib.contextmanager
def output_folder(out):
    """Yields a staging folder beside `out`; when the block ends cleanly, each file written there
    replaces its namesake in `out` (created if missing). A run that fails before then leaves `out`
    exactly as it was: no new file beside old ones from an earlier run."""
    out = os.fspath(out)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(out)) + ".", suffix=".partial",
                                 dir=parent)
    except OSError as e:
        raise _fail(out, e) from e
    try:
        yield stage
        os.makedirs(out, exist_ok=True)
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(out, name))
        _sync_folder(out)
    except OSError as e:
        raise _fail(out, e) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _sync_folder(folder):
    """The rename itself reaches the disk (where the platform can open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
