"""The actions a rule can take, each compiled once into a closure `(record, trace) -> record | None`.

Closures edit the record in place and return it (None = drop it). `trace` is None on the fast path;
`rules try` passes a list and the closures append why they did nothing (a template without value,
no field to set positions in). Anything a single record cannot satisfy raises `RecordError`; the
rule set adds the rule number.

Fields created by `add`, `copy` and `move` are inserted where their tag sorts (after the fields with
the same or a smaller tag), the way MarcEdit adds fields, so records stay readable without a `sort`.
"""

from __future__ import annotations

import importlib
import re
import sys
from bisect import bisect_right
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path as FilePath
from typing import Any

from pipeline.marc.record import Field, Record, RecordError
from pipeline.rules.conditions import Predicate, compile_regex
from pipeline.rules.paths import LEADER_LENGTH, Path, expand_tag, is_control_tag
from pipeline.rules.spec import Node
from pipeline.rules.templates import Template

Trace = list[str] | None
ActionFn = Callable[[Record, Trace], Record | None]
Built = tuple[ActionFn, str]

# actions that accept a `where:` field filter
WHERE_ACTIONS = ("remove", "set", "replace", "copy", "move")


_TAG = attrgetter("tag")


def insert_in_order(fields: list[Field], new: Field) -> None:
    """Insert where the tag sorts: in a record sorted by tag, after the fields with the same or a
    smaller tag. A binary search (records are nearly always in tag order; in one that is not, the
    field still lands next to a smaller and a greater tag)."""
    fields.insert(bisect_right(fields, new.tag, key=_TAG), new)


def _keep(where: Predicate | None) -> Callable[[Field], bool]:
    return (lambda f: True) if where is None else where


# -- remove --------------------------------------------------------------------------------


def build_remove(node: Node, where: Predicate | None) -> Built:
    path_node = node["path"] if node.is_mapping() and node.mapping(("path", "where"), ("path",)) else node
    path = path_node.path()
    if path.is_leader:
        raise path_node.fail("the leader cannot be removed (use set to change its positions)")
    if path.has_positions:
        raise path_node.fail("remove takes fields or subfields, not positions (use set to blank them)")
    if path.whole_fields:
        if where is None and path.ind1 is None and path.ind2 is None:
            tag, tags = path.tag, expand_tag(path.tag)
            if not path.wildcard:
                def remove_tag(rec: Record, trace: Trace) -> Record:
                    rec.fields = [f for f in rec.fields if f.tag != tag]
                    return rec
                return remove_tag, f"remove {path.describe()}"

            def remove_tags(rec: Record, trace: Trace) -> Record:
                rec.fields = [f for f in rec.fields if f.tag not in tags]
                return rec
            return remove_tags, f"remove {path.describe()}"
        select, keep_where = path.select, _keep(where)

        def remove_fields(rec: Record, trace: Trace) -> Record:
            found = select(rec)
            if found and where is not None:
                found = [f for f in found if keep_where(f)]
            if found:
                gone = {id(f) for f in found}
                rec.fields = [f for f in rec.fields if id(f) not in gone]
            return rec
        return remove_fields, f"remove {path.describe()}"

    codes = frozenset(path.codes)
    select, keep_where = path.select, _keep(where)

    def remove_subfields(rec: Record, trace: Trace) -> Record:
        gone = None
        for f in select(rec):
            if where is not None and not keep_where(f):
                continue
            subs = f.subfields
            kept = [s for s in subs if s[0] not in codes]
            if len(kept) != len(subs):
                f.subfields = kept
                if not kept:
                    if gone is None:
                        gone = set()
                    gone.add(id(f))
        if gone:
            rec.fields = [f for f in rec.fields if id(f) not in gone]
        return rec
    return remove_subfields, f"remove {path.describe()} (a field left with no subfields goes too)"


# -- add -----------------------------------------------------------------------------------


def build_add(node: Node, where: Predicate | None) -> Built:
    node.mapping(("tag", "ind1", "ind2", "subfields", "value"), ("tag",),
                 example='{tag: "035", subfields: {a: "(MyLib){001}"}}')
    tag = node["tag"].concrete_tag()
    if is_control_tag(tag):
        for key in ("subfields", "ind1", "ind2"):
            if node.has(key):
                raise node[key].fail(f"control field {tag} has no {key}; give its text as value:")
        template = node["value"].template()

        def add_control(rec: Record, trace: Trace) -> Record:
            value = template.render(rec)
            if value is None:
                if trace is not None:
                    trace.append(f"{tag} not added: {template.missing(rec)} has no value")
                return rec
            insert_in_order(rec.fields, Field(tag, " ", " ", None, value))
            return rec
        return add_control, f"add {tag} {template.text!r}"

    if node.has("value"):
        raise node["value"].fail(f"data field {tag} takes subfields:, e.g. subfields: {{a: \"text\"}}")
    ind1 = node["ind1"].indicator() if node.has("ind1") else " "
    ind2 = node["ind2"].indicator() if node.has("ind2") else " "
    subfields = _subfield_templates(node["subfields"])
    shown = "".join(f"${c}{t.text}" for c, t in subfields)

    def add_data(rec: Record, trace: Trace) -> Record:
        values = []
        for code, template in subfields:
            value = template.render(rec)
            if value is None:
                if trace is not None:
                    trace.append(f"{tag} not added: {template.missing(rec)} has no value")
                return rec
            values.append((code, value))
        insert_in_order(rec.fields, Field(tag, ind1, ind2, values))
        return rec
    ind = (ind1 + ind2).replace(" ", "#")
    return add_data, f"add {tag} {ind} {shown}"


def _subfield_templates(node: Node) -> list[tuple[str, Template]]:
    """`{a: x, b: y}` or `[[a, x], [a, y]]` (repeated codes) or `[{a: x}, {a: y}]`."""
    out: list[tuple[str, Template]] = []
    if node.is_mapping():
        if not node.value:
            raise node.fail("is empty; a data field needs at least one subfield")
        for code, child in node.items():
            out.append((Node(node.ctx, code, child.key, child.line).code(), child.template()))
        return out
    if not isinstance(node.value, list):
        raise node.fail('must be a mapping {a: "text"} or a list [[a, "text"], [a, "more"]]')
    for item in node.elements():
        if isinstance(item.value, list) and len(item.value) == 2:
            pair = item.elements()
            out.append((pair[0].code(), pair[1].template()))
        elif item.is_mapping() and len(item.value) == 1:
            code, child = next(item.items())
            out.append((Node(item.ctx, code, child.key, child.line).code(), child.template()))
        else:
            raise item.fail('each subfield is a pair [code, "text"], e.g. [a, "(MyLib){001}"]')
    return out


# -- set -----------------------------------------------------------------------------------


def build_set(node: Node, where: Predicate | None) -> Built:
    node.mapping(("path", "value", "ind1", "ind2", "where"), ("path",),
                 example='{path: "245a", value: "text"} or {path: "245", ind2: "0"}')
    path_node = node["path"]
    path = path_node.path()
    template = node["value"].template() if node.has("value") else None
    ind1 = node["ind1"].indicator() if node.has("ind1") else None
    ind2 = node["ind2"].indicator() if node.has("ind2") else None
    if template is None and ind1 is None and ind2 is None:
        raise node.fail("set needs value: (or ind1:/ind2: for indicators)")
    if (ind1 is not None or ind2 is not None) and (path.is_leader or path.is_control):
        raise path_node.fail("the leader and control fields have no indicators")
    if path.is_leader or path.is_control:
        if path.is_leader and where is not None:
            raise node.fail("where: filters fields; it does not apply to the leader")
        return _set_positions(node, path, template, where)  # type: ignore[arg-type]
    if template is not None and not path.codes:
        raise path_node.fail(f"set value: on a data field needs a subfield code, e.g. {path.tag}a "
                             "(ind1:/ind2: set indicators)")
    select, keep_where = path.select, _keep(where)
    codes = path.codes

    def set_data(rec: Record, trace: Trace) -> Record:
        value = None
        if template is not None:
            value = template.render(rec)
            if value is None:
                if trace is not None:
                    trace.append(f"not set: {template.missing(rec)} has no value")
                return rec
        for f in select(rec):
            if not keep_where(f):
                continue
            if ind1 is not None:
                f.ind1 = ind1
            if ind2 is not None:
                f.ind2 = ind2
            if value is not None:
                subs = f.subfields
                for code in codes:
                    found = False
                    for i, (c, _) in enumerate(subs):
                        if c == code:
                            subs[i] = (c, value)
                            found = True
                    if not found:
                        subs.append((code, value))
        return rec
    parts = []
    if template is not None:
        parts.append(f"to {template.text!r} (added where missing)")
    if ind1 is not None or ind2 is not None:
        parts.append("indicators " + "".join("*" if i is None else i.replace(" ", "#") for i in (ind1, ind2)))
    return set_data, f"set {path.describe()} " + ", ".join(parts)


def _splice(old: str, start: int, end: int, value: str) -> str:
    if len(old) < start:
        old = old.ljust(start)
    return old[:start] + value + old[end + 1:]


def _set_positions(node: Node, path: Path, template: Template, where: Predicate | None) -> Built:
    start, end = path.start, path.end
    width = path.width if path.start is not None else (LEADER_LENGTH if path.is_leader else None)
    if width is not None and template.constant:
        constant = template.render(Record())
        if len(constant) != width:  # type: ignore[arg-type]
            raise node["value"].fail(f"{constant!r} has {len(constant)} characters but {path.text} "  # type: ignore[arg-type]
                                     f"holds {width}")

    def checked(rec: Record, trace: Trace) -> str | None:
        value = template.render(rec)
        if value is None:
            if trace is not None:
                trace.append(f"not set: {template.missing(rec)} has no value")
            return None
        if width is not None and len(value) != width:
            raise RecordError(f"set {path.text}: {value!r} has {len(value)} characters, {path.text} holds {width}")
        return value

    describe = f"set {path.describe()} to {template.text!r}"
    if path.is_leader:
        def set_leader(rec: Record, trace: Trace) -> Record:
            value = checked(rec, trace)
            if value is not None:
                rec.leader = value if start is None else _splice(rec.leader, start, end, value)  # type: ignore[arg-type]
            return rec
        return set_leader, describe
    select, keep_where, tag = path.select, _keep(where), path.tag
    if start is None:
        creates = not path.wildcard

        def set_control(rec: Record, trace: Trace) -> Record:
            value = checked(rec, trace)
            if value is None:
                return rec
            fields = select(rec)
            for f in fields:
                if f.subfields is None and keep_where(f):
                    f.value = value
            if not fields and creates:
                insert_in_order(rec.fields, Field(tag, " ", " ", None, value))
            return rec
        return set_control, describe + (f" (adds {tag} when missing)" if creates else "")

    def set_control_positions(rec: Record, trace: Trace) -> Record:
        value = checked(rec, trace)
        if value is None:
            return rec
        fields = select(rec)
        if not fields and trace is not None:
            trace.append(f"not set: no field {tag}")
        for f in fields:
            if keep_where(f):
                f.value = _splice(f.value or "", start, end, value)  # type: ignore[arg-type]
        return rec
    return set_control_positions, describe


# -- replace -------------------------------------------------------------------------------


def build_replace(node: Node, where: Predicate | None) -> Built:
    node.mapping(("path", "pattern", "with", "flags", "where"), ("path", "pattern"),
                 example='{path: "245a", pattern: " */$", with: ""}')
    path = node["path"].path()
    rx = compile_regex(node["pattern"], node.get("flags"))
    with_node = node.get("with")
    repl = with_node.text(allow_empty=True) if with_node is not None else ""
    try:
        rx.sub(repl, "")  # parses the replacement: bad \3 or \g<name> fail here, not on record 1
    except (re.error, IndexError) as exc:
        raise (with_node or node).fail(str(exc)) from None
    sub = rx.sub
    describe = f"replace /{rx.pattern}/ with {repl!r} in {path.describe()}"
    start, end = path.start, path.end

    def segment(old: str) -> str:
        if start is None:
            return sub(repl, old)
        if len(old) <= start:
            return old
        seg = old[start:end + 1]  # type: ignore[operator]
        new = sub(repl, seg)
        if len(new) != len(seg):
            raise RecordError(f"replace in {path.text}: {seg!r} became {new!r}; positions must keep their width")
        return old[:start] + new + old[end + 1:]  # type: ignore[operator]

    if path.is_leader:
        if where is not None:
            raise node.fail("where: filters fields; it does not apply to the leader")

        def replace_leader(rec: Record, trace: Trace) -> Record:
            new = segment(rec.leader)
            if start is None and len(new) != LEADER_LENGTH:
                raise RecordError(f"replace in LDR: the leader became {len(new)} characters long")
            rec.leader = new
            return rec
        return replace_leader, describe

    select, keep_where, codes = path.select, _keep(where), frozenset(path.codes)

    def replace_values(rec: Record, trace: Trace) -> Record:
        for f in select(rec):
            if not keep_where(f):
                continue
            subs = f.subfields
            if subs is None:
                if f.value is not None:
                    f.value = segment(f.value)
            elif codes:
                f.subfields = [(c, sub(repl, v)) if c in codes else (c, v) for c, v in subs]
            else:
                f.subfields = [(c, sub(repl, v)) for c, v in subs]
        return rec
    return replace_values, describe


# -- copy / move ---------------------------------------------------------------------------


def build_copy(node: Node, where: Predicate | None, *, move: bool = False) -> Built:
    verb = "move" if move else "copy"
    node.mapping(("from", "to", "ind1", "ind2", "where"), ("from", "to"),
                 example='{from: "001", to: "035a"} or {from: "100", to: "700"}')
    src_node, dst_node = node["from"], node["to"]
    src, dst = src_node.path(), dst_node.path()
    if dst.is_leader or dst.has_positions:
        raise dst_node.fail(f"{verb} makes new fields; to change positions use set with a template, "
                            f"e.g. {{path: \"008/35-37\", value: \"{{041a}}\"}}")
    if dst.wildcard:
        raise dst_node.fail("a new field needs a concrete tag, not a wildcard")
    if len(dst.codes) > 1:
        raise dst_node.fail("name one subfield code for the new fields, e.g. 500a")
    if move and (src.is_leader or src.has_positions):
        raise src_node.fail("move cannot take the leader or positions (they cannot be removed); use copy")
    if src.is_leader and where is not None:
        raise node.fail("where: filters fields; it does not apply to the leader")
    ind1 = node["ind1"].indicator() if node.has("ind1") else dst.ind1
    ind2 = node["ind2"].indicator() if node.has("ind2") else dst.ind2
    tag = dst.tag
    dst_control = is_control_tag(tag)
    if dst_control and (ind1 is not None or ind2 is not None):
        raise node.fail(f"control field {tag} has no indicators")
    whole = src.whole_fields and not src.is_control and not dst.codes and not dst_control
    if not whole and not dst_control and not dst.codes:
        raise dst_node.fail(f"name the subfield code the values go into, e.g. {tag}a")
    keep_where = _keep(where)
    describe = f"{verb} {src.describe()} to " + (
        f"new {tag} fields (same subfields)" if whole else
        f"new {tag} fields" if dst_control else f"${dst.codes} of new {tag} fields")

    if whole:
        def copy_fields(rec: Record, trace: Trace) -> Record:
            sources = [f for f in src.select(rec) if f.subfields is not None and keep_where(f)]
            if move and sources:
                gone = {id(f) for f in sources}
                rec.fields = [f for f in rec.fields if id(f) not in gone]
            for f in sources:
                new = f if move else f.copy()
                new.tag = tag
                if ind1 is not None:
                    new.ind1 = ind1
                if ind2 is not None:
                    new.ind2 = ind2
                insert_in_order(rec.fields, new)
            return rec
        return copy_fields, describe

    code, i1, i2 = dst.codes, ind1 or " ", ind2 or " "
    read_field = src.field_values
    src_codes = frozenset(src.codes)

    def copy_values(rec: Record, trace: Trace) -> Record:
        if src.is_leader:
            sources: list[Field] = []
            values = src.read(rec)
        else:
            sources = [f for f in src.select(rec) if keep_where(f)]
            values = [v for f in sources for v in read_field(f)]
        if move and sources:
            gone = set()
            for f in sources:
                if src_codes and f.subfields is not None:
                    f.subfields = [s for s in f.subfields if s[0] not in src_codes]
                    if f.subfields:
                        continue
                gone.add(id(f))
            if gone:
                rec.fields = [f for f in rec.fields if id(f) not in gone]
        for value in values:
            new = Field(tag, " ", " ", None, value) if dst_control else Field(tag, i1, i2, [(code, value)])
            insert_in_order(rec.fields, new)
        return rec
    return copy_values, describe


def build_move(node: Node, where: Predicate | None) -> Built:
    return build_copy(node, where, move=True)


# -- keep ----------------------------------------------------------------------------------


def build_keep(node: Node, where: Predicate | None) -> Built:
    if isinstance(node.value, dict):
        raise node.fail("must be a list of paths, e.g. keep: [\"001\", \"245ab\", \"6XX\"]")
    items = node.elements(allow_single=True)
    paths = []
    for item in items:
        path = item.path()
        if path.is_leader or path.has_positions:
            raise item.fail("keep lists fields (the leader always stays); positions cannot be kept alone")
        paths.append(path)
    keep_controls_listed = [p for p in paths if p.is_control]
    data_paths = [p for p in paths if not p.is_control]
    whole_tags: frozenset[str] = frozenset().union(*(
        expand_tag(p.tag) for p in data_paths if not p.codes and p.ind1 is None and p.ind2 is None))
    others = [(p.match_field, frozenset(p.codes)) for p in data_paths
              if p.codes or p.ind1 is not None or p.ind2 is not None]
    control_tests = [p.match_field for p in keep_controls_listed]

    def keep(rec: Record, trace: Trace) -> Record:
        out = []
        for f in rec.fields:
            if f.subfields is None:
                if not control_tests or any(t(f) for t in control_tests):
                    out.append(f)
                continue
            if f.tag in whole_tags:
                out.append(f)
                continue
            codes: set[str] = set()
            whole = False
            for test, wanted in others:
                if test(f):
                    if not wanted:
                        whole = True
                        break
                    codes |= wanted
            if whole:
                out.append(f)
            elif codes:
                subs = [s for s in f.subfields if s[0] in codes]
                if subs:
                    f.subfields = subs
                    out.append(f)
        rec.fields = out
        return rec
    listed = ", ".join(p.text for p in paths)
    controls = "only the listed control fields" if control_tests else "all control fields"
    return keep, f"keep only {listed} (and the leader, {controls})"


# -- drop, sort, python --------------------------------------------------------------------


def build_drop(node: Node, where: Predicate | None) -> Built:
    if node.value is not True:
        raise node.fail("write drop: true (and say when with if:/unless:)")

    def drop(rec: Record, trace: Trace) -> None:
        if trace is not None:
            trace.append("dropped")
        return None
    return drop, "drop the record"


def build_sort(node: Node, where: Predicate | None) -> Built:
    if node.value != "fields":
        raise node.fail("the only sort is sort: fields (a stable sort of fields by tag)")

    def sort(rec: Record, trace: Trace) -> Record:
        rec.fields.sort(key=_TAG)
        return rec
    return sort, "sort fields by tag (stable: fields with the same tag keep their order)"


_IDENT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

HOOKS_OFF = ("python: hooks run arbitrary Python code with the app's settings and secrets, so they are off; "
             "rules are data unless the operator sets RULES_ALLOW_PYTHON=true")


def python_allowed(allow: bool | None) -> bool:
    """The caller's explicit choice, else the RULES_ALLOW_PYTHON setting (off by default)."""
    if allow is not None:
        return allow
    from pipeline import settings

    return bool(settings.get("RULES_ALLOW_PYTHON"))


def build_python(node: Node, where: Predicate | None, base_dir: str | None = None, *, allow: bool | None = None,
                 load: bool = True) -> Built:
    """A hook is code, not data: refused unless allowed (`allow`, default RULES_ALLOW_PYTHON); with
    `load` False (`rules check`) the module is never imported, so checking a file runs nothing."""
    spec = node.text()
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise node.fail(f"{spec!r}: write module:function, e.g. mylib_rules:fix_record")
    if not _IDENT.match(module_name) or not func_name.isidentifier():
        raise node.fail(f"{spec!r}: module and function must be Python names, e.g. mylib_rules:fix_record")
    if not python_allowed(allow):
        raise node.fail(HOOKS_OFF)
    if not load:
        def not_loaded(rec: Record, trace: Trace) -> Record | None:
            raise RecordError(f"{spec} was checked, not imported; load the rules to run it")
        return not_loaded, f"call {spec}(record) [Python code: not imported by check]"
    func = _import(node, module_name, func_name, base_dir)

    def python(rec: Record, trace: Trace) -> Record | None:
        try:
            result = func(rec)
        except SystemExit as exc:  # a hook ending the process costs this record, never the run
            raise RecordError(f"{spec} raised SystemExit({exc.code!r})") from None
        if result is None:
            if trace is not None:
                trace.append(f"dropped by {spec}")
            return None
        if not isinstance(result, Record):
            raise RecordError(f"{spec} returned {type(result).__name__}; it must return the Record or None")
        return result
    return python, f"call {spec}(record)"


def _import(node: Node, module_name: str, func_name: str, base_dir: str | None) -> Callable[[Record], Any]:
    """Import the hook; a module next to the rules file is found too."""
    added = False
    try:
        if base_dir and (FilePath(base_dir, module_name.split(".")[0] + ".py").exists()
                         or FilePath(base_dir, module_name.split(".")[0]).is_dir()) and base_dir not in sys.path:
            sys.path.insert(0, base_dir)
            added = True
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise node.fail(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the plugin's own import-time error
        raise node.fail(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(base_dir)  # type: ignore[arg-type]
    func = getattr(module, func_name, None)
    if func is None:
        raise node.fail(f"module {module_name} has no {func_name}")
    if not callable(func):
        raise node.fail(f"{module_name}:{func_name} is not a function")
    return func


BUILDERS: dict[str, Callable[..., Built]] = {
    "remove": build_remove,
    "add": build_add,
    "set": build_set,
    "replace": build_replace,
    "copy": build_copy,
    "move": build_move,
    "keep": build_keep,
    "drop": build_drop,
    "sort": build_sort,
    "python": build_python,
}
