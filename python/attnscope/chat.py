"""Chat templates: a model's Jinja template (GGUF tokenizer.chat_template, or a Hugging Face
folder's tokenizer_config.json / chat_template.jinja, stored in attnscope.json at export)
rendered the way transformers renders it: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, the loop-controls extension, a `tojson` filter that keeps non-ASCII text, and
`raise_exception` / `strftime_now` globals."""
import json
from datetime import datetime


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

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
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


def render(template, messages, *, add_generation_prompt=True, **special_tokens):
    """The prompt text of `messages` under `template` (special_tokens: bos_token, eos_token, ...)."""
    return _environment().from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)
