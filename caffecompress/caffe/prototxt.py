"""Read a Caffe net definition (``.prototxt``) of any generation.

The file text is kept verbatim; the parsed net is upgraded to V2 in Caffe's
order (:mod:`.upgrade`). Protobuf's text format refuses unknown field names,
and real deploy files carry names of forks we do not know (``interp_param``,
``upsample_param``, ...). So a strict parse is tried first; if it fails only
because of unknown names, the file is parsed again skipping them, and every
skipped name is reported in :attr:`NetDef.skipped` (OpenCV's own reader also
skips them, silently).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from google.protobuf import text_format

from ..errors import FormatError
from .proto import pb
from .upgrade import detect_format, upgrade_net

__all__ = ["NetDef", "SkippedField", "read_prototxt", "parse_prototxt"]


@dataclass(frozen=True)
class SkippedField:
    """One occurrence of a field name the schema does not know."""

    #: Dotted path of field names from the root, e.g. ``"layer.interp_param"``.
    path: str
    #: 1-based line of the name in the file.
    line: int
    #: Name of the enclosing ``layer``/``layers`` record, when inside one.
    layer: str | None = None


@dataclass
class NetDef:
    """A parsed net definition.

    Attributes
    ----------
    text : str
        The file's text, verbatim.
    net : pb.NetParameter
        The net upgraded to V2 (only ``layer`` records, an ``Input`` layer for
        legacy inputs). Fields named in ``skipped`` are not in it.
    format : str
        The file's own generation: ``"V0"``, ``"V1"`` or ``"V2"``.
    skipped : list of str
        Dotted paths (``"layer.interp_param"``) of the unknown fields a
        lenient parse had to skip, once each, in file order; empty when the
        strict parse succeeded.
    layers : list of (str, str)
        ``(name, type)`` of each V2 layer, in order.
    input_shapes : dict of str to tuple of int
        Net input blob -> shape, from ``Input`` layers (including those made
        from legacy ``input_shape``/``input_dim``).
    path : str or None
        Where the text came from.
    skipped_at : list of SkippedField
        Every skipped occurrence with its line and layer.
    notes : list of str
        Problems Caffe's upgrade would log and carry on from.
    source_index : list of int or None
        For each V2 layer, the index of the record in the file that produced
        it (``None`` for an ``Input`` layer made from legacy inputs).
    """

    text: str
    net: object
    format: str
    skipped: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    input_shapes: dict = field(default_factory=dict)
    path: str | None = None
    skipped_at: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    source_index: list = field(default_factory=list)


# ---------------------------------------------------------------- text decoding


_HEAD = 65536


def _check_text(head: bytes, path) -> None:
    # Text has no NUL bytes and few control characters; protobuf binary (a
    # caffemodel given by mistake) is full of both.
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    if b"\x00" in head or (head and controls / len(head) > 0.01):
        raise FormatError(
            "binary data where a text prototxt was expected (a .caffemodel given as prototxt?)", path=path
        )


def _decode(data: bytes, path) -> str:
    _check_text(data[:_HEAD], path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Old files carry Latin-1 comments; the structure is ASCII either way.
        return data.decode("latin-1")


# ---------------------------------------------------------------- unknown-name scan

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<ident>[A-Za-z_][\w.]*)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|inf(?:inity)?|nan)|-[A-Za-z_]\w*)
  | (?P<punct>[{}<>\[\]:;,/])
    """,
    re.VERBOSE,
)


def _tokens(text: str):
    line = 1
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        tok = m.group()
        if kind != "ws":
            yield kind, tok, line, pos, m.end()
        line += tok.count("\n")
        pos = m.end()


class _Unbalanced(ValueError):
    """The text ends inside a block or value, or closes one never opened."""


class _Scanner:
    """Walks text-format tokens against the schema and lists unknown names.

    It is strict about structure: a block left open at the end of the file, a
    field name without a value, or a ``}`` closing nothing raise
    :class:`_Unbalanced` (protobuf's lenient parse accepts an unclosed block
    inside an unknown field).
    """

    def __init__(self, text: str):
        self.toks = list(_tokens(text))
        self.i = 0
        self.found: list[SkippedField] = []

        #: (start, end) character spans of each skipped field, name to value.
        self.spans: list[tuple[int, int]] = []

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None, None, None, None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def _last_line(self) -> int:
        return self.toks[-1][2] if self.toks else 1

    def take_value(self, line):
        if self.peek()[1] is None:
            raise _Unbalanced(f"line {line}: the file ends where a value was expected")
        return self.take()

    def skip_value(self, line):
        kind, tok = self.take_value(line)[:2]
        if tok in ("{", "<"):
            self.skip_block(line)
        elif tok == "[":
            while self.peek()[1] != "]":
                if self.peek()[1] is None:
                    raise _Unbalanced(f"line {line}: '[' is never closed")
                if self.peek()[1] in ("{", "<"):
                    self.skip_value(line)
                else:
                    self.take()
            self.take()
        elif kind == "str":
            while self.peek()[0] == "str":  # adjacent strings concatenate
                self.take()
        elif tok in ("}", ">", "]"):
            raise _Unbalanced(f"line {line}: {tok!r} where a value was expected")

    def skip_block(self, line):
        depth = 1
        while depth:
            if self.peek()[1] is None:
                raise _Unbalanced(f"line {line}: block opened here is never closed")
            tok = self.take()[1]
            if tok in ("{", "<"):
                depth += 1
            elif tok in ("}", ">"):
                depth -= 1

    def message(self, desc, path: str, layer, opened=None):
        """Fields up to the closing brace (``opened``: its line; None at the top level)."""
        while True:
            kind, tok, line, start, _ = self.peek()
            if tok is None:
                if opened is not None:
                    raise _Unbalanced(f"line {opened}: block opened here is never closed")
                return
            if tok in ("}", ">"):
                if opened is None:
                    raise _Unbalanced(f"line {line}: {tok!r} closes no block")
                self.take()
                return
            self.take()
            if tok == "[":  # extension or Any URL: [name] ... ]
                parts = []
                while self.peek()[1] != "]":
                    if self.peek()[1] is None:
                        raise _Unbalanced(f"line {line}: '[' is never closed")
                    parts.append(self.take()[1])
                self.take()
                name, fdesc = "[" + "".join(parts) + "]", None
            else:
                name, fdesc = tok, desc.fields_by_name.get(tok)
            if self.peek()[1] == ":":
                self.take()
            full = f"{path}.{name}" if path else name
            if fdesc is None:
                self.found.append(SkippedField(full, line, layer))
                self.skip_value(line)
                self.spans.append((start, self.toks[self.i - 1][4]))
            elif fdesc.message_type is not None:
                self.message_value(fdesc, full, layer, line)
            else:
                self.skip_value(line)
            if self.peek()[1] in (",", ";"):
                self.take()

    def message_value(self, fdesc, full, layer, line):
        nxt = self.peek()[1]
        if nxt == "[":  # list of messages
            self.take()
            while self.peek()[1] != "]":
                if self.peek()[1] is None:
                    raise _Unbalanced(f"line {line}: '[' is never closed")
                if self.peek()[1] == ",":
                    self.take()
                    continue
                self.one_message(fdesc, full, layer, line)
            self.take()
        else:
            self.one_message(fdesc, full, layer, line)

    def one_message(self, fdesc, full, layer, line):
        kind, tok, oline = self.take_value(line)[:3]
        if tok not in ("{", "<"):
            return
        if full in ("layer", "layers"):
            layer = self._record_name(fdesc.message_type)
        self.message(fdesc.message_type, full, layer, opened=oline)

    def _record_name(self, desc):
        # This record's own name: a `name` directly inside it, else (V0) the
        # one inside its nested `layer` block.
        depth, j, nested = 0, self.i, None
        while j < len(self.toks):
            tok = self.toks[j][1]
            if tok in ("{", "<"):
                depth += 1
            elif tok in ("}", ">"):
                if depth == 0:
                    break
                depth -= 1
            elif tok == "name" and depth <= 1 and j + 2 < len(self.toks):
                k = j + 1 + (self.toks[j + 1][1] == ":")
                if self.toks[k][0] == "str":
                    if depth == 0:
                        return self.toks[k][1][1:-1]
                    nested = nested or self.toks[k][1][1:-1]
            j += 1
        return nested


def _unknown_fields(text: str) -> tuple[list[SkippedField], str]:
    """The unknown fields of *text*, and the text with them blanked out.

    Blanking keeps every newline, so line numbers stay valid.
    """
    scanner = _Scanner(text)
    scanner.message(pb.NetParameter.DESCRIPTOR, "", None)
    parts, pos = [], 0
    for start, end in scanner.spans:
        parts.append(text[pos:start])
        parts.append(re.sub(r"[^\n]", " ", text[start:end]))
        pos = end
    parts.append(text[pos:])
    return scanner.found, "".join(parts)


# ---------------------------------------------------------------- parsing


def _parse_error(e, path) -> FormatError:
    line = getattr(e, "GetLine", lambda: None)()
    msg = str(e)
    # protobuf prefixes "line:col : " (3.20) or "line:col: "; keep one form.
    msg = re.sub(r"^\d+:\d+\s*:\s*", "", msg)
    msg = msg.replace(pb.NetParameter.DESCRIPTOR.file.package + ".", "caffe.")
    if len(msg) > 300:  # some runtimes quote the whole offending line
        msg = msg[:297] + "..."
    where = f"line {line}: " if line else ""
    return FormatError(f"{where}invalid prototxt: {msg}", path=path)


def _is_unknown_name_error(e) -> bool:
    msg = str(e)
    return "has no field named" in msg or ("Extension" in msg and "not registered" in msg)


def parse_prototxt(text: str, *, path=None) -> NetDef:
    """Parse prototxt *text* (see :func:`read_prototxt`); ``path`` is for messages."""
    path = None if path is None else os.fspath(path)
    try:
        return _parse(text, path)
    except RecursionError:
        raise FormatError("invalid prototxt: messages nested too deeply", path=path) from None


def _parse(text: str, path) -> NetDef:
    raw = pb.NetParameter()
    skipped_at: list[SkippedField] = []
    try:
        text_format.Parse(text, raw)
    except text_format.ParseError as e:
        if not _is_unknown_name_error(e):
            raise _parse_error(e, path) from None
        try:
            skipped_at, blanked = _unknown_fields(text)
        except _Unbalanced as bad:
            # protobuf's lenient parse would accept this structure: refuse it here
            line, _, why = str(bad).partition(": ")
            raise FormatError(f"{line}: invalid prototxt: {why}", path=path) from None
        except ValueError:
            skipped_at, blanked = [], None
        raw = pb.NetParameter()
        try:
            text_format.Parse(text, raw, allow_unknown_extension=True, allow_unknown_field=True)
        except text_format.ParseError as e2:
            # Old runtimes cannot skip every value form (protobuf 3.20 fails on
            # lists inside unknown blocks): parse the text with the unknown
            # fields blanked out instead.
            if blanked is None or not skipped_at:
                raise _parse_error(e2, path) from None
            raw = pb.NetParameter()
            try:
                text_format.Parse(blanked, raw)
            except text_format.ParseError:
                raise _parse_error(e2, path) from None
        if not skipped_at:  # the scan and protobuf disagree: report protobuf's view
            m = re.search(r'has no field named "([^"]+)"', str(e))
            skipped_at = [SkippedField(m.group(1) if m else str(e), getattr(e, "GetLine", lambda: 0)() or 0)]
    fmt = detect_format_or_raise(raw, path)
    notes: list[str] = []
    try:
        net, source_index = upgrade_net(raw, notes=notes)
    except FormatError as e:
        raise FormatError(e.reason, path=path, layer=e.layer) from None
    if not len(net.layer):
        hint = " (is it a solver file?)" if skipped_at else ""
        raise FormatError(f"the prototxt defines no layers{hint}", path=path)
    skipped = list(dict.fromkeys(s.path for s in skipped_at))
    return NetDef(
        text=text,
        net=net,
        format=fmt,
        skipped=skipped,
        layers=[(lp.name, lp.type) for lp in net.layer],
        input_shapes=_input_shapes(net),
        path=path,
        skipped_at=skipped_at,
        notes=notes,
        source_index=source_index,
    )


def detect_format_or_raise(net, path) -> str:
    try:
        return detect_format(net)
    except FormatError as e:
        raise FormatError(e.reason, path=path) from None


def _input_shapes(net) -> dict:
    shapes: dict = {}
    for lp in net.layer:
        if lp.type != "Input":
            continue
        given = list(lp.input_param.shape)
        for i, top in enumerate(lp.top):
            # One shape per top, or one shape shared by every top (Caffe's rule).
            if len(given) == 1:
                shapes[top] = tuple(int(d) for d in given[0].dim)
            elif i < len(given):
                shapes[top] = tuple(int(d) for d in given[i].dim)
    return shapes


def net_text(net) -> str:
    """A ``NetParameter`` as prototxt text (what OpenCV's Caffe importer reads)."""
    return text_format.MessageToString(net)


def read_prototxt(path) -> NetDef:
    """Read a Caffe net definition of any generation.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.prototxt`` (V0, V1 or V2; fork fields allowed).

    Returns
    -------
    NetDef
        ``.text`` verbatim, ``.net`` upgraded to V2, ``.format`` the file's
        generation, ``.skipped`` unknown field names a lenient parse skipped,
        ``.layers`` ``(name, type)`` pairs and ``.input_shapes``.

    Raises
    ------
    FormatError
        Missing or unreadable path, a directory, binary data, text that is not
        a valid net (the message gives the line), mixed ``layer``/``layers``,
        an upgrade Caffe would refuse, or no layers at all.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        raise FormatError("is a directory, not a prototxt file", path=p)
    try:
        with open(p, "rb") as f:
            # Look at the head first: a multi-GB caffemodel given by mistake is
            # refused before it is read into memory.
            head = f.read(_HEAD)
            _check_text(head, p)
            data = head + f.read()
    except FileNotFoundError:
        raise FormatError("no such file", path=p) from None
    except PermissionError:
        raise FormatError("permission denied (unreadable file)", path=p) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror or e}", path=p) from None
    return parse_prototxt(_decode(data, p), path=p)
