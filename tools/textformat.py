"""A schema-free reader of protobuf text format, for tools/synthetic.py.

The tool infers blob shapes from a deploy prototxt and needs every field as
written (also fork fields the schema does not know), so it walks the text
itself. The package does not use this: its one prototxt parser is
:mod:`caffecompress.caffe.prototxt`.
"""

from __future__ import annotations

import re



# --------------------------------------------------------------------------
# Minimal protobuf text-format reader (names, types, bottoms, tops, shapes).
# --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}<>:\[\],;])|(?P<word>[^\s{}<>:\[\],;"'#]+)"""
)


class TextMessage:
    """A parsed text-format message: field name -> list of values, in file order.

    Values are ``str`` (strings unquoted, scalars as written) or
    :class:`TextMessage` for sub-messages. Only as much of the text format as
    Caffe prototxts use is understood; it never needs the schema.
    """

    __slots__ = ("fields",)

    def __init__(self):
        self.fields: list[tuple[str, object]] = []

    def all(self, key: str) -> list:
        """Every value of ``key`` in order."""
        return [v for k, v in self.fields if k == key]

    def get(self, key: str, default=None):
        """The last value of ``key`` (text format: last one wins), or ``default``."""
        vals = self.all(key)
        return vals[-1] if vals else default


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:  # unterminated quote or stray character
            raise ValueError(f"prototxt: cannot tokenise near offset {pos}: {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.lastgroup == "str":
            s = m.group("str")[1:-1]
            out.append(("str", bytes(s, "utf-8").decode("unicode_escape") if "\\" in s else s))
        elif m.lastgroup == "punct":
            out.append(("p", m.group("punct")))
        elif m.lastgroup == "word":
            out.append(("w", m.group("word")))
    return out


def parse_prototxt_text(text: str | bytes) -> TextMessage:
    """Parse protobuf text format into a :class:`TextMessage` tree.

    Parameters
    ----------
    text : str or bytes
        A Caffe ``.prototxt`` (any generation: V0, V1, V2).

    Returns
    -------
    TextMessage
        The root message.

    Raises
    ------
    ValueError
        On unbalanced braces or a malformed field.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    toks = _tokens(text)
    root = TextMessage()
    stack = [root]
    closers = []
    i = 0
    n = len(toks)
    while i < n:
        kind, val = toks[i]
        if kind == "p" and val in "}>":
            if len(stack) == 1 or closers[-1] != val:
                raise ValueError(f"prototxt: unbalanced {val!r}")
            stack.pop()
            closers.pop()
            i += 1
            continue
        if kind == "p" and val in ",;":
            i += 1
            continue
        if kind != "w":
            raise ValueError(f"prototxt: expected a field name, got {val!r}")
        key = val
        i += 1
        if i < n and toks[i] == ("p", ":"):
            i += 1
        if i >= n:
            raise ValueError(f"prototxt: field {key!r} has no value")
        kind, val = toks[i]
        if kind == "p" and val in "{<":
            msg = TextMessage()
            stack[-1].fields.append((key, msg))
            stack.append(msg)
            closers.append("}" if val == "{" else ">")
            i += 1
        elif kind == "p" and val == "[":
            i += 1
            while i < n and toks[i] != ("p", "]"):
                if toks[i] != ("p", ","):
                    stack[-1].fields.append((key, toks[i][1]))
                i += 1
            i += 1
        elif kind in ("w", "str"):
            # adjacent string literals concatenate
            if kind == "str":
                while i + 1 < n and toks[i + 1][0] == "str":
                    i += 1
                    val += toks[i][1]
            stack[-1].fields.append((key, val))
            i += 1
        else:
            raise ValueError(f"prototxt: bad value for {key!r}: {val!r}")
    if len(stack) != 1:
        raise ValueError("prototxt: missing closing brace")
    return root


