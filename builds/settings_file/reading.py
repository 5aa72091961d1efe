"""Reading a settings file: its text, within limits, to data with `${VAR}` substituted.

A file may come from an untrusted hand: reading refuses, as errors, files over 1 MiB, alias bombs,
self-referencing anchors, deep nesting, NUL characters, and `${VAR}` naming one of the server's
own settings.
"""

import os
import re

import yaml

from .format import SettingsFileError, join_path

_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|\$)")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# A settings file lists projects, connections and agents: even a large organisation's is a few
# hundred kilobytes. The limit keeps a mistaken or hostile file (a log, an image) from being read
# into memory and parsed.
MAX_FILE_BYTES = 1024 * 1024
# Nesting: a project is two levels (its mapping and its subprojects list), so this allows project
# trees far deeper than any real one, and keeps PyYAML's recursive composer (and our own recursive
# walks) well below Python's recursion limit: 10,000 nested `[` is an error, not a RecursionError.
MAX_DEPTH = 100
# Aliases: `*name` makes the parser hand back the anchored node again, shared, at no cost, but
# everything after it (substitution, validation, the database) walks the data as a tree. Nested
# lists of aliases of aliases ("billion laughs") grow that tree exponentially: 9 aliases a level,
# 9 levels, is a 430-byte file and 387 million nodes. So we count, while composing, how many nodes
# each alias stands for (a node's expanded size, memoized on the node, so counting costs one pass
# over the file) and refuse once the aliases of a file add more than this many nodes in all. A
# file that reuses an anchor a few times (a login list, a retention block) adds dozens or
# hundreds; an alias-free file is limited only by its size.
MAX_ALIAS_NODES = 100_000
TEXT_CHARS_PER_NODE = 64

# `${VAR}` reads the environment of the process that applies the file, which is the server's own:
# these variables hold its keys and passwords (the encryption key, the database and broker URLs
# with their passwords, the admin password of ensure_superuser). A file that names one would store
# it in a field that export_settings prints and the admin shows.
SERVER_VARIABLES = frozenset({"SECRET_KEY", "DATABASE_URL", "CACHE_URL"})
SERVER_VARIABLE_PREFIXES = ("DOCKERSUPPORT_", "CELERY_", "DJANGO_")


def read_settings(handle, name: str) -> str:
    """The text of a settings file from a stream, reading at most MAX_FILE_BYTES + 1 bytes (or
    characters, from a text stream: parse_settings checks the size in bytes again)."""
    data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        try:
            size = os.fstat(handle.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            size = 0  # a pipe or an in-memory stream has no size to report
        raise SettingsFileError([_too_large(size if size > MAX_FILE_BYTES else None, name)])
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError([
            f"{name}: not UTF-8 text (byte {exc.start}); save the settings file as UTF-8"
        ]) from None


def _too_large(size: int | None, name: str | None = None) -> str:
    what = f"{size} bytes" if size is not None else f"more than {MAX_FILE_BYTES} bytes"
    return (f"{name + ': ' if name else ''}the settings file is {what}; the limit is {MAX_FILE_BYTES} bytes (1 MiB): "
            "split it into several files (apply never deletes what a file does not mention)")


def parse_settings(text: str, environ=None) -> dict:
    """YAML text to a dict with `${VAR}` substituted; raises SettingsFileError."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise SettingsFileError([_too_large(size)])
    try:
        data = yaml.load(text, Loader=_SettingsLoader)  # a SafeLoader with limits, never yaml.Loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SettingsFileError([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors: a date like 2024-13-45, a number of thousands of digits.
        raise SettingsFileError([f"not a valid value: {str(exc)[:200]}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsFileError(["(top level): expected a mapping with 'projects' and/or 'agents'"])
    errors: list[str] = []
    data = _substitute(data, "", os.environ if environ is None else environ, errors)
    if errors:
        raise SettingsFileError(errors)
    return data


class _SettingsLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing self-referencing aliases, deep nesting and alias bombs.

    The checks are made while the node graph is composed, before anything is constructed or
    walked, so each is an error naming its line as soon as the parser reaches it.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: dict[str, yaml.Mark] = {}  # anchors whose node is still being composed
        self._alias_nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise SettingsFileError([
                    f"{_at(event.start_mark)}alias *{event.anchor} is inside the node it refers to "
                    f"(&{event.anchor} at {_where(self._open_anchors[event.anchor])}): a value cannot "
                    "contain itself; write the repeated part out"
                ])
            node = super().compose_node(parent, index)
            self._alias_nodes += node.expanded_size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise SettingsFileError([
                    f"{_at(event.start_mark)}aliases expand the file to more than {MAX_ALIAS_NODES} "
                    f"extra values (*{event.anchor} alone stands for {node.expanded_size}); reuse an "
                    "anchor a few times, not aliases of aliases, or write the values out"
                ])
            return node
        if self._depth >= MAX_DEPTH:
            raise SettingsFileError([
                f"{_at(event.start_mark)}nested more than {MAX_DEPTH} levels deep; a settings file "
                "needs far fewer: check the brackets and the indentation"
            ])
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors[anchor] = event.start_mark
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.pop(anchor, None)
        # Children are composed (and sized) before their parent, aliased nodes long before.
        if isinstance(node, yaml.SequenceNode):
            node.expanded_size = 1 + sum(child.expanded_size for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            node.expanded_size = 1 + sum(k.expanded_size + v.expanded_size for k, v in node.value)
        else:
            # A long text counts by its length too: a thousand aliases of one 600 KB text are 600 MB.
            node.expanded_size = 1 + len(node.value) // TEXT_CHARS_PER_NODE
        return node


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _at(mark) -> str:
    return f"{_where(mark)}: "


def _substitute(value, path, environ, errors):
    if isinstance(value, dict):
        return {k: _substitute(v, join_path(path, str(k)), environ, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", environ, errors) for i, v in enumerate(value)]
    if isinstance(value, str) and "\x00" in value:
        errors.append(f"{path}: contains a NUL character, which no field can hold")
        return value
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match):
        name = match.group(1)
        if name is None:
            return "$"
        if not _VAR_NAME_RE.match(name):
            errors.append(f"{path}: '${{{name}}}' is not a valid environment variable reference")
            return ""
        if _is_server_variable(name):
            errors.append(
                f"{path}: ${{{name}}} is a setting of the server itself and cannot be used in a settings "
                "file; give the value a variable of its own"
            )
            return ""
        if name not in environ:
            errors.append(f"{path}: environment variable {name} is not set")
            return ""
        return environ[name]

    return _VAR_RE.sub(replace, value)


def _is_server_variable(name: str) -> bool:
    # Upper-cased: Windows' environment ignores case, so ${secret_key} would read SECRET_KEY there.
    name = name.upper()
    return name in SERVER_VARIABLES or name.startswith(SERVER_VARIABLE_PREFIXES)
