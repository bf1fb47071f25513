"""Errors of the export told in few words (gist) or whole (describe_error)."""


def describe_error(e):
    """The whole message of `e` and of its causes, on one line: `Type: message <- Cause: message`."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        parts.append(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def gist(e, limit=400):
    """What went wrong in `e` and its causes, in at most `limit` characters: each exception's first
    line, or for TorchScript interpreter errors their last line (the original message)."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        torchscript = lines and ("Traceback of TorchScript" in str(e) or lines[0].startswith("The following operation"))
        msg = (lines[-1] if torchscript else lines[0]) if lines else ""
        if not (msg and any(msg[:80] in p for p in parts)):  # a cause the message already quotes
            parts.append(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
        e = e.__cause__ or e.__context__
    text = " <- ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"
