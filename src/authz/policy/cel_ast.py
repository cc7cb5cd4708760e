"""The checked syntax tree of a compiled CEL condition, for lints that look at its shape.

cel-expr-python exposes no syntax tree, but `Expression.serialize()` returns a
`google.protobuf.Any` holding a `cel.expr.CheckedExpr`, and the Python protobuf runtime does not
know that message. This reads the few fields lints need straight from the protobuf wire format.
Field numbers are those of cel-spec's `proto/cel/expr/syntax.proto` and `checked.proto`
(https://github.com/google/cel-spec/tree/master/proto/cel/expr).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel

# Expr: id=2, const_expr=3, ident_expr=4, select_expr=5, call_expr=6, list_expr=7,
# struct_expr=8, comprehension_expr=9. Constant: null=1, bool=2, int64=3, uint64=4, double=5,
# string=6, bytes=7. Ident: name=1. Select: operand=1, field=2, test_only=3.
# Call: target=1, function=2, args=3. CheckedExpr: expr=4, source_info=5.
# SourceInfo: positions=4 (map<int64 expr id, int32 code point offset>).
_EXPR_ID, _CONST, _IDENT, _SELECT, _CALL, _LIST, _STRUCT, _COMPREHENSION = 2, 3, 4, 5, 6, 7, 8, 9
_CHECKED_EXPR, _CHECKED_SOURCE_INFO, _SOURCE_POSITIONS = 4, 5, 4


@dataclass(frozen=True, slots=True)
class Node:
    """One expression: kind is const, ident, select, call, list, struct or comprehension."""

    kind: str
    id: int
    name: str = ""  # ident name, select field, or call function
    value: Any = None  # a constant's value
    operand: Node | None = None  # select operand, or call target (receiver)
    args: tuple[Node, ...] = ()  # call arguments, list elements, or nested expressions
    test_only: bool = False  # select inside has()
    offset: int = -1  # code point offset in the condition text, -1 when unknown

    def walk(self) -> Iterator[Node]:
        yield self
        if self.operand is not None:
            yield from self.operand.walk()
        for arg in self.args:
            yield from arg.walk()


@dataclass
class _Fields:
    values: dict[int, list[Any]] = field(default_factory=dict)

    def first(self, number: int, default: Any = None) -> Any:
        found = self.values.get(number)
        return found[0] if found else default

    def all(self, number: int) -> list[Any]:
        return self.values.get(number, [])


def parse(program: cel.Expression) -> Node | None:
    """The tree of a compiled condition, or None if its serialized form cannot be read."""
    try:
        wrapper = _fields(program.serialize())
        checked = _fields(wrapper.first(2, b""))
        positions = _positions(checked.first(_CHECKED_SOURCE_INFO, b""))
        return _expr(checked.first(_CHECKED_EXPR, b""), positions)
    except (ValueError, IndexError, RecursionError):
        return None


def _positions(source_info: bytes) -> dict[int, int]:
    positions = {}
    for entry in _fields(source_info).all(_SOURCE_POSITIONS):
        pair = _fields(entry)
        positions[pair.first(1, 0)] = pair.first(2, -1)
    return positions


def _expr(data: bytes, positions: dict[int, int]) -> Node:
    f = _fields(data)
    expr_id = f.first(_EXPR_ID, 0)
    offset = positions.get(expr_id, -1)
    if _CONST in f.values:
        return Node("const", expr_id, value=_constant(_fields(f.first(_CONST))), offset=offset)
    if _IDENT in f.values:
        name = _text(_fields(f.first(_IDENT)).first(1, b""))
        return Node("ident", expr_id, name=name, offset=offset)
    if _SELECT in f.values:
        select = _fields(f.first(_SELECT))
        return Node(
            "select",
            expr_id,
            name=_text(select.first(2, b"")),
            operand=_expr(select.first(1, b""), positions),
            test_only=bool(select.first(3, 0)),
            offset=offset,
        )
    if _CALL in f.values:
        call = _fields(f.first(_CALL))
        target = call.first(1)
        return Node(
            "call",
            expr_id,
            name=_text(call.first(2, b"")),
            operand=_expr(target, positions) if target is not None else None,
            args=tuple(_expr(arg, positions) for arg in call.all(3)),
            offset=offset,
        )
    if _LIST in f.values:  # CreateList: elements=1
        elements = _fields(f.first(_LIST)).all(1)
        return Node("list", expr_id, args=_exprs(elements, positions), offset=offset)
    if _STRUCT in f.values:  # CreateStruct: entries=2; Entry: map_key=3, value=4
        parts = [
            part
            for entry in _fields(f.first(_STRUCT)).all(2)
            for part in (_fields(entry).first(3), _fields(entry).first(4))
            if part is not None
        ]
        return Node("struct", expr_id, args=_exprs(parts, positions), offset=offset)
    if _COMPREHENSION in f.values:
        # iter_range=2, accu_init=4, loop_condition=5, loop_step=6, result=7; iter_var=1 names
        # the variable (macros such as exists() expand into comprehensions).
        comprehension = _fields(f.first(_COMPREHENSION))
        parts = [comprehension.first(n) for n in (2, 4, 5, 6, 7)]
        return Node(
            "comprehension",
            expr_id,
            name=_text(comprehension.first(1, b"")),
            args=_exprs([p for p in parts if p is not None], positions),
            offset=offset,
        )
    return Node("unknown", expr_id, offset=offset)


def _exprs(items: list[bytes], positions: dict[int, int]) -> tuple[Node, ...]:
    return tuple(_expr(item, positions) for item in items)


def _constant(f: _Fields) -> Any:
    if 2 in f.values:
        return bool(f.first(2))
    if 6 in f.values:
        return _text(f.first(6))
    if 1 in f.values:
        return None
    if 3 in f.values:
        value = f.first(3)
        return value - (1 << 64) if value >= 1 << 63 else value
    return f.values  # other kinds: lints do not look at them


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _fields(data: bytes) -> _Fields:
    """Protobuf wire format → field number → values (varints as int, the rest as bytes)."""
    fields = _Fields()
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            value = data[position : position + length]
            if len(value) != length:
                raise ValueError("truncated field")
            position += length
        elif wire_type == 1:
            value, position = data[position : position + 8], position + 8
        elif wire_type == 5:
            value, position = data[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.values.setdefault(number, []).append(value)
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
