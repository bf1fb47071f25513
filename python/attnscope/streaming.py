"""Generation you can watch: a progress bar with tokens/s, and a stream of the answer's text as
it is generated. Both ride on the C++ generation loop's per-step callback
(GenerateOptions.on_step, called with the step and each row's new token id)."""
import queue
import sys
import threading
import time


def in_kernel():
    """True inside a Jupyter kernel (a notebook cell, where a display can be updated in place)."""
    ip = sys.modules.get("IPython")
    shell = ip.get_ipython() if ip is not None and hasattr(ip, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """A progress bar counting `unit`s, with their rate: in a Jupyter cell one output line
    updated in place (no stream of stderr chunks, no widget needed), in a terminal a tqdm bar;
    a no-op where tqdm is missing or show=False. Call it as a per-step callback (one step) or
    advance(n); close() when done: a bar that stopped short (an answer that ended before its
    limit) ends at its end, saying so."""

    def __init__(self, total, desc="generating", unit="tok", *, show=True, unit_scale=False):
        self.bar = None
        if not show:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return
        if in_kernel():
            self.bar = _CellBar(total, desc, unit, unit_scale, tqdm.format_meter)
        else:
            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True)

    def __call__(self, step=None, next_ids=None):
        self.advance(1)
        return True

    def advance(self, n):
        if self.bar is not None:
            self.bar.update(n)

    update = advance  # tqdm's name

    def close(self):
        bar, self.bar = self.bar, None
        if bar is None:
            return
        if bar.total and bar.n < bar.total:  # stopped early: the bar ends where the work did
            short = bar.total
            bar.total = bar.n
            bar.set_postfix_str(f"stopped before {short}", refresh=False)
        bar.close()


class _CellBar:
    """tqdm's text in one notebook output, redrawn in place (IPython display_id) at most every
    0.2 s and once at the end."""

    def __init__(self, total, desc, unit, unit_scale, fmt):
        from IPython.display import Pretty, display
        self.total, self.n, self.desc, self.unit, self.scale, self.fmt = total, 0, desc, unit, unit_scale, fmt
        self.postfix, self.start, self.shown, self._pretty = None, time.monotonic(), 0.0, Pretty
        self.handle = display(Pretty(self._text()), display_id=True)

    def _text(self):
        return self.fmt(self.n, self.total, time.monotonic() - self.start, prefix=self.desc, unit=self.unit,
                        unit_scale=self.scale, postfix=self.postfix, ncols=100)

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.shown >= 0.2:
            self.shown = now
            self.handle.update(self._pretty(self._text()))

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def close(self):
        self.handle.update(self._pretty(self._text()))


class TokenStream:
    """Iterating yields the answer's text as it is generated: one str per step (a list of str,
    one per row, for a batch). `trace` holds the Trace once the iteration has finished (the
    capture run over prompt + response comes after the last token). Leaving the loop early
    stops the generation at the next step (stop reason "stopped by the caller").

    run(on_step) -> Trace runs the generation; decode(ids) -> str is the tokenizer's decoding
    (None: tokens are shown as <id>)."""

    def __init__(self, run, decode, batch, progress=None):
        self.trace = None
        self._q = queue.Queue()
        self._stop = threading.Event()
        self._decode = decode or (lambda ids: "".join(f"<{i}>" for i in ids))
        self._batch = batch
        self._progress = progress

        def on_step(step, next_ids):
            if self._progress is not None:
                self._progress(step, next_ids)
            self._q.put(("token", next_ids.tolist()))
            return not self._stop.is_set()

        def work():
            try:
                self._q.put(("done", run(on_step)))
            except BaseException as e:  # noqa: BLE001 - handed to the iterating thread
                self._q.put(("error", e))

        self._thread = threading.Thread(target=work, name="attnscope-generate", daemon=True)
        self._thread.start()

    def __iter__(self):
        ids = [[] for _ in range(self._batch)]
        shown = [""] * self._batch
        try:
            while True:
                kind, value = self._q.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    self.trace = value
                    return
                pieces = []
                for r, i in enumerate(value):
                    ids[r].append(i)
                    text = self._decode(ids[r])
                    pieces.append(text[len(shown[r]):] if text.startswith(shown[r]) else text)
                    shown[r] = text
                yield pieces[0] if self._batch == 1 else pieces
        finally:
            if self.trace is None:  # left early: stop at the next step and wait for the worker
                self._stop.set()
                self._thread.join()
                while not self._q.empty():  # the worker still made its Trace (up to where it stopped)
                    kind, value = self._q.get()
                    if kind == "done":
                        self.trace = value
            if self._progress is not None:
                self._progress.close()

    def __repr__(self):
        return f"<attnscope.TokenStream {'finished' if self.trace is not None else 'running'}>"
