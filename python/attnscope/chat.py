"""Chat templates: a model's Jinja template (GGUF tokenizer.chat_template, or a Hugging Face
folder's tokenizer_config.json / chat_template.jinja, stored in attnscope.json at export)
rendered the way transformers renders it: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, the loop-controls extension, a `tojson` filter that keeps non-ASCII text, and
`raise_exception` / `strftime_now` globals.

A template is a program from a file: it renders with bounds. No `*` or `**` and no integer
argument to a method or filter may make more than MAX_ITEMS characters/elements or a number of
more than MAX_BITS bits, the text stops at MAX_OUTPUT characters and the rendering at
MAX_SECONDS; beyond them, and for anything the sandbox refuses, render() raises one ValueError
naming the template's source."""
import json
import sys
import time
from datetime import datetime

MAX_ITEMS = 1 << 20      # characters or elements one `*` or one call may produce
MAX_BITS = 1 << 16       # bits of a number `**` may produce
MAX_OUTPUT = 1 << 22     # characters of rendered text
MAX_SECONDS = 5.0        # wall time of one rendering


class _Bound(Exception):
    """A template went past one of the bounds (message: which)."""


def _check_args(what, args, kwargs):
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_ITEMS:
            raise _Bound(f"{what} was given {v}: integer arguments above {MAX_ITEMS} are refused")


def _bounded_filter(name, f):
    def g(*args, **kwargs):
        _check_args(f"filter '{name}'", args, kwargs)
        return f(*args, **kwargs)
    for attr in ("jinja_pass_arg",):  # context/environment-passing filters keep their marker
        if hasattr(f, attr):
            setattr(g, attr, getattr(f, attr))
    return g


def _environment():
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ValueError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_ITEMS:
                        raise _Bound(f"'*' would make {len(seq) * n} items (more than {MAX_ITEMS})")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and abs(left) > 1 and right * abs(left).bit_length() > MAX_BITS:
                raise _Bound(f"'**' would make a number of about {right * abs(left).bit_length()} bits")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
            _check_args(f"{getattr(__obj, '__name__', 'a call')}()", args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def messages_of(prompt, system=None):
    """A list of {"role", "content"} messages from a str (one user turn) or a list of messages."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        msgs = [dict(m) for m in prompt]
        for m in msgs:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"chat message {m!r}: expected {{'role': str, 'content': str}}")
    else:
        raise ValueError(f"chat prompt {prompt!r}: expected a str or a list of {{'role', 'content'}} messages")
    if system is not None:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
    return msgs


def render(template, messages, *, add_generation_prompt=True, source="the model", **special_tokens):
    """The prompt text of `messages` under `template` (special_tokens: bos_token, eos_token, ...),
    within the module's bounds; a template that breaks one, or that the sandbox or Jinja refuses,
    raises ValueError naming `source` (the file the template came from)."""
    import jinja2
    where = f"chat template of {source}"
    deadline = time.monotonic() + MAX_SECONDS
    previous = sys.gettrace()

    def tracer(frame, event, arg):  # the template's Python lines: checks the clock as they run
        if time.monotonic() > deadline:
            raise _Bound(f"rendering took more than {MAX_SECONDS:g} s")
        return tracer

    try:
        env = _environment()
        parts, size = [], 0
        sys.settrace(tracer)
        try:
            for chunk in env.from_string(template).generate(
                    messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise _Bound(f"the rendered text passed {MAX_OUTPUT} characters")
                parts.append(chunk)
        finally:
            sys.settrace(previous)
        return "".join(parts)
    except _Bound as e:
        raise ValueError(f"{where}: refused, {e}") from None
    except jinja2.exceptions.TemplateError as e:  # syntax, undefined, raise_exception, SecurityError
        raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
    except (OverflowError, MemoryError, RecursionError, TypeError, ValueError, ZeroDivisionError,
            AttributeError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: {type(e).__name__}: {e}") from None
