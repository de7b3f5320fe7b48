"""A small renderer of the Go text/template subset Ollama's chat templates use.

Follows Go's ``text/template`` semantics for what it supports: text and
``{{ }}`` actions with ``{{-`` / ``-}}`` trimming of the adjacent white space;
``if`` / ``else if`` / ``else`` / ``end``; ``range PIPE`` and
``range $i, $v := PIPE`` (dot becomes the element); ``$x := PIPE`` and
``$x = PIPE`` with block scoping; ``/* comments */``; fields (``.Role``,
``$.Messages``, ``$x.Content``, ``(index .Messages 0).Role``); string and
integer literals; the functions ``eq`` (true when the first argument equals
any other), ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and`` / ``or`` (the first
falsy / truthy argument, else the last), ``not``, ``len``, ``index``, ``slice``;
pipes ``x | f``. Truth is Go's: false, 0, "", empty lists and maps and nil are
false. Anything else raises, so a template outside the subset fails loudly.
"""
from __future__ import annotations

import json
import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+)'
                    r"|(?P<var>\$\w*(?:\.\w+)*)|(?P<field>(?:\.\w+)+|\.)|(?P<op>:=|=|\||,|\(|\))"
                    r"|(?P<ident>[A-Za-z_]\w*))")


def render(template: str, data: dict) -> str:
    nodes, i = _parse(_lex(template), 0, ())
    assert i == len(_lex(template)), "unbalanced end"
    out: list[str] = []
    _exec(nodes, data, [{"$": data}], out)
    return "".join(out)


# ---------------------------------------------------------------- lexing and parsing

def _lex(t: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with trim markers applied to the texts."""
    parts, pos = [], 0
    for m in _ACTION.finditer(t):
        text = t[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim_next":
            parts.pop()
            text = text.lstrip(" \t\r\n")
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        if m.group(3):
            parts.append(("trim_next", ""))
        pos = m.end()
    text = t[pos:]
    if parts and parts[-1][0] == "trim_next":
        parts.pop()
        text = text.lstrip(" \t\r\n")
    parts.append(("text", text))
    return parts


def _parse(parts, i, stop):
    nodes = []
    while i < len(parts):
        kind, body = parts[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        head = body.split(None, 1)[0] if body else ""
        if body.startswith("/*"):
            i += 1
            continue
        if head in ("end", "else") and stop:
            return nodes, i
        if head == "if":
            node, i = _parse_if(parts, i, body[2:].strip())
            nodes.append(node)
        elif head == "range":
            rest = body[5:].strip()
            m = re.match(r"(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.*)", rest, re.S)
            names = (m.group(1), m.group(2)) if m else ()
            expr = _tokens(m.group(3) if m else rest)
            body_nodes, i = _parse(parts, i + 1, ("end",))
            assert parts[i][1] == "end", "range without end"
            nodes.append(("range", names, expr, body_nodes))
            i += 1
        else:
            m = re.match(r"(\$\w+)\s*(:=|=)\s*(.*)", body, re.S)
            if m:
                nodes.append(("set", m.group(1), m.group(2), _tokens(m.group(3))))
            else:
                nodes.append(("print", _tokens(body)))
            i += 1
    return nodes, i


def _parse_if(parts, i, cond):
    branches, other = [], []
    while True:
        body, i = _parse(parts, i + 1, ("end", "else"))
        branches.append((_tokens(cond), body))
        tag = parts[i][1]
        if tag == "end":
            return ("if", branches, other), i + 1
        if tag.startswith("else if"):
            cond = tag[7:].strip()
            continue
        assert tag == "else", tag
        other, i = _parse(parts, i + 1, ("end",))
        assert parts[i][1] == "end", "if without end"
        return ("if", branches, other), i + 1


def _tokens(s: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {s[pos:]!r}")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


# ---------------------------------------------------------------- evaluation

def truth(v) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, str) or
                (isinstance(v, (str, list, tuple, dict)) and len(v) == 0))


def _lookup(scopes, name):
    for s in reversed(scopes):
        if name in s:
            return s[name]
    raise NameError(f"undefined variable {name}")


def _field(v, name):
    if isinstance(v, dict):
        return v.get(name)
    return getattr(v, name)


FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "not": lambda a: not truth(a), "len": len,
    "index": lambda a, *ks: _index(a, ks), "slice": lambda a, i=0, j=None: a[i:j],
}


def _index(a, keys):
    for k in keys:
        a = a[k]
    return a


def _eval(toks, dot, scopes):
    """Value of a pipeline ``cmd | cmd ...``."""
    cmds, cur, depth = [], [], 0
    for t in toks:
        if t == ("op", "|") and depth == 0:
            cmds.append(cur)
            cur = []
            continue
        depth += t == ("op", "(")
        depth -= t == ("op", ")")
        cur.append(t)
    cmds.append(cur)
    val, piped = None, False
    for cmd in cmds:
        val = _command(cmd, dot, scopes, [val] if piped else [])
        piped = True
    return val


def _command(toks, dot, scopes, extra):
    args, i = [], 0
    while i < len(toks):
        arg, i = _operand(toks, i, dot, scopes)
        args.append(arg)
    if toks and toks[0][0] == "ident":
        name = toks[0][1]
        rest = args[1:] + extra
        if name in ("and", "or"):
            for a in rest:
                if truth(a) != (name == "and"):
                    return a
            return rest[-1]
        if name in ("true", "false"):
            return name == "true"
        return FUNCS[name](*rest)
    assert len(args) == 1 and not extra, f"not a function call: {toks}"
    return args[0]


def _operand(toks, i, dot, scopes):
    kind, text = toks[i]
    if kind == "op" and text == "(":
        depth, j = 1, i + 1
        while depth:
            depth += toks[j] == ("op", "(")
            depth -= toks[j] == ("op", ")")
            j += 1
        val = _eval(toks[i + 1:j - 1], dot, scopes)
        if j < len(toks) and toks[j][0] == "field":            # (expr).Field
            for name in toks[j][1].split(".")[1:]:
                val = _field(val, name)
            j += 1
        return val, j
    if kind == "str":
        return json.loads(text), i + 1
    if kind == "raw":
        return text[1:-1], i + 1
    if kind == "num":
        return int(text), i + 1
    if kind == "var":
        name, *fields = text.split(".")
        val = _lookup(scopes, name)
        for f in fields:
            val = _field(val, f)
        return val, i + 1
    if kind == "field":
        val = dot
        for f in text.split(".")[1:]:
            val = _field(val, f) if f else val
        return val, i + 1
    if kind == "ident":
        return text, i + 1                      # a function name, resolved by _command
    raise ValueError(f"unexpected {text!r}")


def _show(v) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _exec(nodes, dot, scopes, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            out.append(_show(_eval(node[1], dot, scopes)))
        elif kind == "set":
            _, name, op, expr = node
            val = _eval(expr, dot, scopes)
            if op == ":=":
                scopes[-1][name] = val
            else:
                for s in reversed(scopes):
                    if name in s:
                        s[name] = val
                        break
                else:
                    raise NameError(f"assignment to undeclared {name}")
        elif kind == "if":
            for cond, body in node[1]:
                if truth(_eval(cond, dot, scopes)):
                    _exec(body, dot, scopes + [{}], out)
                    break
            else:
                _exec(node[2], dot, scopes + [{}], out)
        elif kind == "range":
            _, names, expr, body = node
            seq = _eval(expr, dot, scopes)
            items = seq.items() if isinstance(seq, dict) else enumerate(seq or [])
            for k, v in items:
                scope = {}
                if len(names) == 2 and names[1]:
                    scope[names[0]], scope[names[1]] = k, v
                elif names:
                    scope[names[0]] = v
                _exec(body, v, scopes + [scope], out)
