"""A change of the rule table written into its TOML document, keeping comments and layout.

Owns how a new ``Config`` (what an admin API action made of the running one) becomes a new
TOML document: ``patch(document, old, new)`` edits the parsed document (tomlkit) where the two
values differ and nowhere else, so the file's comments, order and layout survive; and
``atomic_write`` puts the new text on disk durably (a temporary file in the same folder,
fsync, rename over the old one, fsync of the folder).

Strategy: walk the two values side by side. A scalar that changed is set; a section that
changed is patched key by key; an array of tables (listeners, rules, targets, functions,
certificates) is matched item by item by identity (a listener's name, a rule's domain + url, a
target's address or function + qualifier): items gone are deleted, items kept are patched in
place, new ones appended. When the kept items end up in a different order than the new value
has, that one array is written afresh (its comments inside are lost, nothing else). Derived
fields (``location_id``, ``source``) are never written. The caller then validates the
document with the loader and checks it gives exactly ``new`` (store/table.py), so a patch this
module got wrong is refused, never written.

Must not know: the actions, where the document is kept (a file or etcd), HTTP.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import AoT, Array, InlineTable, Table

from .config import (Alias, Certificate, Config, Function, FunctionVersion, HealthCheck, Listener,
                     TARGET_KEYS, RemoteScf, Rewrite, Rule, Target, VersionMatch)
from .errors import ConfigError

#: (value type, field) -> TOML key; None: derived, never written
_KEYS: dict[tuple[type, str], str | None] = {
    (Config, "listeners"): "listener", (Config, "functions"): "function",
    (Config, "source"): None, (Listener, "rules"): "rule", (Rule, "location_id"): None,
    (Function, "versions"): "version", (Function, "aliases"): "alias",
}
#: fields of (key, value) pairs, written as an inline table
_PAIRS = {"environment", "additional_version_weights"}
#: Target keys by type, as the loader declares them (config.TARGET_KEYS, in its order)
_TARGET_KEYS = {kind: tuple(keys) for kind, keys in TARGET_KEYS.items()}
#: arrays written as inline tables (``targets = [{...}]``) when the document has none yet
_INLINE = {(Rule, "targets"), (Listener, "certificates")}
#: fields written as an inline table (``rewrite = {...}``)
_INLINE_TABLES = {(Rule, "rewrite")}


class Unwritable(Exception):
    """The change cannot be expressed in this document (a listener added by --listen)."""


def identity(value: Any) -> Any:
    """What names an item of an array across a change."""
    if isinstance(value, Listener):
        return value.name
    if isinstance(value, Rule):
        return (value.domain, value.url)
    if isinstance(value, Function):
        return value.key
    if isinstance(value, Target):
        return (value.type, value.address, value.namespace, value.function, value.qualifier,
                value.invoke_url)
    return value


def _key(kind: type, name: str) -> str | None:
    return _KEYS.get((kind, name), name)


def _fields(value: Any) -> list[tuple[str, Any]]:
    """(TOML key, value) of the fields a dataclass value writes."""
    if isinstance(value, Target):
        return [(k, getattr(value, k)) for k in _TARGET_KEYS[value.type]]
    out = []
    for f in dataclasses.fields(value):
        key = _key(type(value), f.name)
        if key is not None:
            out.append((key, getattr(value, f.name)))
    return out


def plain(value: Any, inline: bool = False) -> Any:
    """A config value as a tomlkit item (tables for sections, arrays of tables for lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (HealthCheck, Target, Rule, Listener, Function, RemoteScf,
                          Certificate, FunctionVersion, Alias, VersionMatch, Rewrite)):
        table = tomlkit.inline_table() if inline else tomlkit.table()
        defaults = type(value)(**_required(value))
        for key, item in _fields(value):
            name = _field_name(type(value), key)
            # only what differs from the default is written, as a person writes a file;
            # a target's type and weight always
            if key in ("type", "weight") or getattr(defaults, name) != item \
                    or name in _required(value):
                if item is None or (isinstance(item, tuple) and not item):
                    continue
                table[key] = _array_item(type(value), name, item) \
                    if isinstance(item, tuple) else plain(
                        item, inline or (type(value), name) in _INLINE_TABLES)
        return table
    if isinstance(value, tuple):
        return list(value)
    return value


def _field_name(kind: type, key: str) -> str:
    for (k, name), toml_key in _KEYS.items():
        if k is kind and toml_key == key:
            return name
    return key


def _required(value: Any) -> dict[str, Any]:
    """The fields without a default, so a default instance can be made for comparison."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _array_item(kind: type, name: str, items: tuple[Any, ...]) -> Any:
    if name in _PAIRS:
        table = tomlkit.inline_table()
        table.update(dict(items))
        return table
    if not items or not dataclasses.is_dataclass(items[0]):
        return list(items)
    if (kind, name) in _INLINE:
        array = tomlkit.array()
        array.extend(plain(item, inline=True) for item in items)
        if len(items) > 1:
            array.multiline(True)
        return array
    aot = tomlkit.aot()
    for item in items:
        aot.append(plain(item))
    return aot


def patch(document: Container | Table | InlineTable, old: Any, new: Any) -> None:
    """Edit ``document`` (the TOML of ``old``) so that it reads as ``new``."""
    kind = type(new)
    if isinstance(old, Target) and old.type != new.type:
        raise Unwritable("a target cannot change its type")
    for f in dataclasses.fields(new):
        key = _key(kind, f.name)
        if key is None or (isinstance(new, Target) and key not in _TARGET_KEYS[new.type]):
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if after is None or (key not in ("type", "weight") and _is_default(f, after)):
            document.pop(key, None)  # back to its default: the key goes, as a person writes it
        elif dataclasses.is_dataclass(after) and dataclasses.is_dataclass(before) \
                and isinstance(document.get(key), (Table, InlineTable)):
            patch(document[key], before, after)
        elif isinstance(after, tuple) and any(dataclasses.is_dataclass(v)
                                              for v in (*before[:1], *after[:1])):
            _patch_array(document, key, kind, f.name, before, after)
        elif isinstance(after, tuple):
            document[key] = _array_item(kind, f.name, after)
        else:
            document[key] = plain(after, isinstance(document, InlineTable)
                                  or (kind, f.name) in _INLINE_TABLES)


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(f.default == value)
    if f.default_factory is not dataclasses.MISSING:
        return bool(f.default_factory() == value)
    return False


def _patch_array(document: Container | Table | InlineTable, key: str, kind: type, name: str,
                 before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
    array = document.get(key)
    if array is None:
        if after:
            document[key] = _array_item(kind, name, after)
        return
    held = len(array) if isinstance(array, (AoT, Array)) else 0  # items the document has
    if not isinstance(array, (AoT, Array)) or any(b not in after for b in before[held:]):
        raise Unwritable(f"{key}: items that are not in the file (added by --listen) cannot "
                         "change")
    wanted = {identity(item): item for item in after}
    in_file = list(before[:held])
    for i in range(len(in_file) - 1, -1, -1):  # items gone, from the end so indexes hold
        if identity(in_file[i]) not in wanted:
            del array[i]
            del in_file[i]
    for i, item in enumerate(in_file):
        if item != wanted[identity(item)]:
            patch(array[i], item, wanted[identity(item)])
    present = {identity(item) for item in before}
    inline = isinstance(array, Array)
    for item in after:
        if identity(item) not in present:
            array.append(plain(item, inline=inline))
            in_file.append(item)
    extra = [item for item in before[held:] if identity(item) in wanted]
    if [identity(i) for i in in_file] + [identity(i) for i in extra] != \
            [identity(i) for i in after]:
        if extra:
            raise Unwritable(f"{key}: items that are not in the file cannot move")
        document[key] = _array_item(kind, name, after)  # the order changed: written afresh


def render(document: tomlkit.TOMLDocument) -> str:
    return document.as_string()


def is_read_only(path: Path) -> bool:
    """A file without write permission is read-only for us, even when we run as root."""
    try:
        return not os.stat(path).st_mode & 0o222
    except OSError:
        return False


#: errors that mean "this place cannot be written", not "something broke"
READ_ONLY_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path``'s content durably: a reader sees the old file or the new, never a mix,
    and after a crash the new one is there once this returned. A symlink (a ConfigMap's) is
    written through, to the file it points to."""
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except OSError:
            pass  # not ours to give away: the new file keeps our owner
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the rename itself is durable only once the folder is synced
    finally:
        os.close(folder)
