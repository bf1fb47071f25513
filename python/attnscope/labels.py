"""Token labels for figures and the view: whitespace and control characters made visible.

Below both api (Model.label) and trace (labels of a trace read from a file).
"""

_BYTE_LEVEL = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t"}  # GPT-2 byte-level markers


MAX_LABEL = 48  # characters a label keeps for display (a token of megabytes would stall a figure)


def readable(token):
    """A token label that shows whitespace and control characters: ␣ for spaces, ↵ for newlines,
    ⇥ for tabs, \\xNN for other control characters; cut to MAX_LABEL characters with "…"."""
    if len(token) > MAX_LABEL:
        token = token[: MAX_LABEL - 1] + "…"
    for k, v in _BYTE_LEVEL.items():
        token = token.replace(k, v)
    out = []
    for ch in token:
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"
