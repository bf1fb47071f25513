"""Generation you can watch: a progress bar with tokens/s, and a stream of the answer's text as
it is generated. Both ride on the C++ generation loop's per-step callback
(GenerateOptions.on_step, called with the step and each row's new token id)."""
import queue
import threading


class Progress:
    """A tqdm bar (the notebook widget under Jupyter) counting generated tokens, with tokens/s;
    a no-op where tqdm is missing. Call it as the per-step callback; close() when done."""

    def __init__(self, total, desc="generating", unit="tok", *, show=True):
        if not show:
            self.bar = None
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            self.bar = None
            return
        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def __call__(self, step=None, next_ids=None):
        self.advance(1)
        return True

    def advance(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


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
