"""What every subcommand shares: argument parsing helpers, output checks, saving figures."""
import os


def _pairs(text):
    try:
        return [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p]
    except ValueError:
        raise SystemExit(f"attnscope: {text!r} is not a list of LAYER:HEAD pairs (e.g. 0:0,14:2)")


def _ints(text):
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise SystemExit(f"attnscope: {text!r} is not a comma-separated list of integers")


def save_figure(fig, path, dpi):
    """Saves the figure whole or not at all (attnscope.files: a full disk or a kill leaves no
    truncated figure under the final name; the error names the file), then closes it."""
    from ..files import atomic_path
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=ext)
    import matplotlib.pyplot as plt
    plt.close(fig)


def _check_writable_file(out, exts):
    """Before the model loads: the extension, and a folder that exists and can be written."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a folder: expected a file path ending in {', '.join(exts)}")
    ext = os.path.splitext(out)[1].lower()
    if ext not in exts:
        raise ValueError(f"--out {out!r}: expected a {', '.join(exts[:-1])} or {exts[-1]} file")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {out!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {out!r}: folder {folder!r} is not writable")


def _check_out_dir(out):
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} exists and is not a folder")


def _layer_picks(n):
    """Up to 8 layers spread over the model, first and last included (the paper's layout); n: a
    layer count, or the list of a hybrid's attention layers to pick from."""
    layers = list(range(n)) if isinstance(n, int) else list(n)
    k = len(layers)
    return [layers[i] for i in sorted({round(i * (k - 1) / 7) for i in range(8)})] if k > 8 else layers
