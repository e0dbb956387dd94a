"""Rewriting the bot's config without losing anything: .env keys, YAML key paths, atomic replace.

`update_env` and `update_yaml` are pure (text in, text out). `write_atomic` writes a temporary file
in the same folder, fsyncs it, keeps a backup of the old file and renames over it, so a crash at
any point leaves either the old file or the new one, never a mix.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

_ASSIGN = re.compile(r"^(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.]*)(?P<eq>[ \t]*=[ \t]*)"
                     r"(?P<rest>.*)$")


class FileRefused(Exception):
    """The file cannot be rewritten safely; nothing was written."""


def _split_value(rest: str) -> Tuple[str, str, bool]:
    """(value as written, what follows it on the line, whether a quote stays open past the line)."""
    if rest[:1] in ("'", '"'):
        q = rest[0]
        i = 1
        while i < len(rest):
            if q == '"' and rest[i] == "\\":
                i += 2
                continue
            if rest[i] == q:
                return rest[:i + 1], rest[i + 1:], False
            i += 1
        return rest, "", True
    m = re.search(r"[ \t]+#", rest)
    if m:
        return rest[:m.start()], rest[m.start():], False
    return rest, "", False


def _render(old_value: str, new: str) -> str:
    """The new value in the old value's quoting style."""
    q = old_value[:1] if old_value[:1] in ("'", '"') else ""
    if q == "'" and "'" not in new:
        return f"'{new}'"
    if q or re.search(r"[\s#'\"\\$]", new):
        return '"' + new.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return new


def env_value(old_value: str) -> str:
    """What a value as written means (for comparisons and tests)."""
    if old_value[:1] == "'" and old_value.endswith("'") and len(old_value) >= 2:
        return old_value[1:-1]
    if old_value[:1] == '"' and old_value.endswith('"') and len(old_value) >= 2:
        return re.sub(r"\\(.)", r"\1", old_value[1:-1])
    return old_value.strip()


def _lines(text: str) -> List[str]:
    """Lines with their endings, split at \\n only (str.splitlines also splits at \\f, \\x1e, \\x85...)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def parse_env(text: str) -> Dict[str, str]:
    """KEY -> value for single-line assignments (later lines win, as in python-dotenv)."""
    found: Dict[str, str] = {}
    open_quote = None
    for line in _lines(text):
        line = line.rstrip("\r\n")
        if open_quote:
            if open_quote in line:
                open_quote = None
            continue
        m = _ASSIGN.match(line)
        if not m:
            continue
        value, _, unterminated = _split_value(m.group("rest"))
        if unterminated:
            open_quote = value[0]
            continue
        found[m.group("key")] = env_value(value)
    return found


def update_env(text: str, updates: Dict[str, str]) -> str:
    """Set each key in place (every occurrence), keeping every other byte; append missing keys."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = _lines(text)
    seen = set()
    open_quote = None
    out: List[str] = []
    for line in lines:
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        if open_quote:                      # inside a multi-line quoted value: not ours to touch
            if open_quote in body:
                open_quote = None
            out.append(line)
            continue
        m = _ASSIGN.match(body)
        if not m:
            out.append(line)
            continue
        value, tail, unterminated = _split_value(m.group("rest"))
        if unterminated:
            open_quote = value[0]
        key = m.group("key")
        if key in updates and not unterminated:
            seen.add(key)
            body = m.group("lead") + key + m.group("eq") + _render(value, updates[key]) + tail
        out.append(body + ending)
    missing = [k for k in updates if k not in seen]
    if missing and open_quote:
        raise FileRefused(f"the file ends inside a quoted value opened with {open_quote}: a key added at the "
                          f"end would become part of it. Close the quote first")
    if missing:
        if out and not out[-1].endswith("\n"):
            out[-1] += newline
        out.extend(f"{k}={_render('', updates[k])}{newline}" for k in missing)
    return "".join(out)


# ------------------------------------------------------------------------- YAML by key path

def update_yaml(text: str, updates: Dict[str, object]) -> str:
    """Set dotted key paths (a.b.c) in block-style YAML, editing only the lines of those keys, then
    check by parsing that exactly those values changed. Raises FileRefused if it cannot."""
    try:
        before = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise FileRefused(f"not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(before, dict):
        raise FileRefused("the YAML document is not a mapping")
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    for path, value in updates.items():
        lines = _set_yaml_line(lines, path.split("."), value, newline)
    new = "".join(lines)
    try:
        after = yaml.safe_load(new)
    except yaml.YAMLError:
        raise FileRefused("could not edit this YAML safely; set the keys by hand") from None
    expected = before
    for path, value in updates.items():
        expected = _with(expected, path.split("."), value)
    if after != expected:
        raise FileRefused("could not edit this YAML safely (flow style or anchors?); set the keys by hand")
    return new


def _with(doc: object, path: Sequence[str], value: object) -> dict:
    doc = dict(doc) if isinstance(doc, dict) else {}
    doc[path[0]] = value if len(path) == 1 else _with(doc.get(path[0]), path[1:], value)
    return doc


def _scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _set_yaml_line(lines: List[str], path: List[str], value: object, newline: str) -> List[str]:
    start, end, indent = 0, len(lines), -1
    for depth, key in enumerate(path):
        pat = re.compile(r"^(?P<ind>[ ]*)(?P<key>" + re.escape(key) + r"|'" + re.escape(key) + r"'|\"" +
                         re.escape(key) + r"\")[ ]*:(?P<rest>.*?)(?P<nl>\r?\n)?$")
        child_indent = None
        found = None
        for i in range(start, end):
            stripped = lines[i].strip()
            if not stripped or stripped.startswith("#"):
                continue
            ind = len(lines[i]) - len(lines[i].lstrip(" "))
            if ind <= indent:
                end = i
                break
            if child_indent is None:
                child_indent = ind
            if ind != child_indent:
                continue
            m = pat.match(lines[i])
            if m:
                found = (i, m)
                break
        last = depth == len(path) - 1
        if found is None:   # create the rest of the path at the end of this block
            ind = child_indent if child_indent is not None else indent + 2 if indent >= 0 else 0
            new = []
            for d, k in enumerate(path[depth:]):
                pad = " " * (ind + 2 * d)
                tail = f" {_scalar(value)}" if depth + d == len(path) - 1 else ""
                new.append(f"{pad}{k}:{tail}{newline}")
            if end > 0 and not lines[end - 1].endswith(("\n", "\r")):
                lines[end - 1] += newline
            return lines[:end] + new + lines[end:]
        i, m = found
        if last:
            rest = m.group("rest")
            comment = ""
            cm = re.search(r"[ \t]+#.*$", rest)
            if cm and not rest.strip().startswith(("'", '"')):
                comment = cm.group(0)
            lines[i] = f"{m.group('ind')}{m.group('key')}: {_scalar(value)}{comment}{m.group('nl') or ''}"
            return lines
        start, indent = i + 1, len(m.group("ind"))
        # the block of this key runs until a line indented no deeper than the key
        for j in range(start, len(lines)):
            s = lines[j].strip()
            if s and not s.startswith("#") and len(lines[j]) - len(lines[j].lstrip(" ")) <= indent:
                end = j
                break
        else:
            end = len(lines)
    return lines


# ------------------------------------------------------------------------- files

def read_text(path: str) -> Tuple[Optional[str], bytes]:
    """(text or None if the file does not exist, raw bytes). Raises FileRefused."""
    if os.path.isdir(path):
        raise FileRefused(f"{path} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            raw = f.read(16 * 1024 * 1024 + 1)
    except FileNotFoundError:
        return None, b""
    except OSError as e:
        raise FileRefused(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > 16 * 1024 * 1024:
        raise FileRefused(f"{path} is larger than 16 MiB; not a config file")
    if b"\0" in raw:
        raise FileRefused(f"{path} is not a text file (it contains NUL bytes)")
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError:
        raise FileRefused(f"{path} is not UTF-8 text") from None


class Ops:
    """The system calls write_atomic makes, replaceable so tests can crash it at any step."""
    fsync: Callable[[int], None] = staticmethod(os.fsync)
    replace: Callable[[str, str], None] = staticmethod(os.replace)
    write: Callable[[int, bytes], int] = staticmethod(os.write)


def write_atomic(path: str, data: bytes, backup: Optional[str] = None, ops: Optional[Ops] = None) -> None:
    """Replace `path` with `data` atomically; first keep the old contents at `backup` (if given)."""
    ops = ops or Ops()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    if backup is not None and mode is not None:
        with open(path, "rb") as f:
            _write_replace(backup, f.read(), folder, mode, ops)
    _write_replace(path, data, folder, mode, ops)


def _write_replace(path: str, data: bytes, folder: str, mode: Optional[int], ops: Ops) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        view = memoryview(data)
        while view:
            n = ops.write(fd, view)
            view = view[n:]
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        ops.fsync(fd)
        os.close(fd)
        fd = -1
        ops.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:   # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            ops.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
