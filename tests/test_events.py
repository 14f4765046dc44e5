"""The cost event's own encoding: ``CostEvent`` writes its ``__init__`` and its JSON out by hand (it is compiled
with the request path, see its comment), so these hold them to the dataclass's fields: every field, in field
order, with its value, both ways. And ``rfc3339``, which formats the date once a second."""

from __future__ import annotations

import ast
import dataclasses
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

import modeltrack
from modeltrack.events import FIELD_ORDER, CostEvent, json_lines, rfc3339


def _annotations() -> dict[str, str]:
    """The fields' annotations as written: compiled, ``dataclasses.fields`` gives ``type`` for ``str | None``."""
    tree = ast.parse((Path(modeltrack.__file__).parent / "events.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CostEvent")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}  # type: ignore[union-attr]


ANNOTATIONS = _annotations()


def _value(i: int, name: str, annotation: str) -> Any:
    """A value of the field's type that no other field has and that is not the field's default."""
    if annotation.startswith("dict"):
        return {"k": name}
    if annotation.startswith("bool"):
        return True
    if annotation.startswith("int"):
        return 1000 + i
    if annotation.startswith("float"):
        return i + 0.25
    return f"{name}-{i}"


def _every_field_set() -> CostEvent:
    kw = {f.name: _value(i, f.name, ANNOTATIONS[f.name]) for i, f in enumerate(dataclasses.fields(CostEvent))}
    return CostEvent(**kw)


def test_every_field_is_set_by_the_constructor_and_encoded_in_field_order() -> None:
    ev = _every_field_set()
    expected = dataclasses.asdict(ev)
    assert len(expected) == len(FIELD_ORDER) == 40
    for i, f in enumerate(dataclasses.fields(CostEvent)):
        assert getattr(ev, f.name) == _value(i, f.name, ANNOTATIONS[f.name]), f.name
    assert list(orjson.loads(ev.to_json())) == list(FIELD_ORDER)
    assert orjson.loads(ev.to_json()) == expected
    assert ev.to_dict() == expected and list(ev.to_dict()) == list(FIELD_ORDER)
    assert ev.to_line() == ev.to_json() + b"\n"
    assert json_lines([ev, ev]) == [ev.to_line(), ev.to_line()]
    assert CostEvent.from_dict(orjson.loads(ev.to_json())) == ev


def test_each_boolean_is_set_and_encoded_alone() -> None:
    """The booleans share two values, so the test above cannot tell two of them apart: set each alone in turn."""
    fields = list(enumerate(dataclasses.fields(CostEvent)))
    booleans = [f.name for _, f in fields if ANNOTATIONS[f.name].startswith("bool")]
    assert len(booleans) >= 4
    for on in booleans:
        kw = {f.name: _value(i, f.name, ANNOTATIONS[f.name]) for i, f in fields}
        kw.update({name: name == on for name in booleans})
        ev = CostEvent(**kw)
        encoded = orjson.loads(ev.to_json())
        for name in booleans:
            assert getattr(ev, name) is (name == on), (on, name)
            assert encoded[name] is (name == on), (on, name)
            assert ev.to_dict()[name] is (name == on), (on, name)
        assert CostEvent.from_dict(encoded) == ev


def test_defaults_are_the_dataclass_defaults() -> None:
    required = {f.name: _value(i, f.name, ANNOTATIONS[f.name]) for i, f in enumerate(dataclasses.fields(CostEvent))}
    for f in dataclasses.fields(CostEvent):
        if f.default is not dataclasses.MISSING:
            del required[f.name]
    ev = CostEvent(**required)
    for f in dataclasses.fields(CostEvent):
        if f.default is not dataclasses.MISSING:
            assert getattr(ev, f.name) == f.default, f.name
    assert CostEvent.from_dict(orjson.loads(ev.to_json())) == ev


def test_to_dict_copies_the_properties() -> None:
    ev = _every_field_set()
    d = ev.to_dict()
    d["properties"]["k"] = "changed"
    assert ev.properties == {"k": "properties"}


def test_rfc3339_matches_datetime_to_the_millisecond() -> None:
    rng = random.Random(7)
    stamps = [1_796_611_975 + rng.random() * 86_400 * 3 for _ in range(5_000)]
    stamps += [1_796_611_975.9999996, 1_796_611_975.0, 1_796_611_975.0004999, 1_796_611_975.9995]
    for ts in sorted(stamps):
        dt = datetime.fromtimestamp(ts, UTC)
        assert rfc3339(ts) == dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z", ts
