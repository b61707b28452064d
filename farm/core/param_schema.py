"""A customizable's pydantic parameter model, rebuilt from source with `ast`: no user code runs.

The coordinator validates submitted parameters against it, so a wrong value is refused at submit
time (a 4xx naming the field) instead of failing a build later. What can be read statically is
rebuilt: field types (int, float, str, bool, lists, dicts, Literal, Optional, nested models and
enums of the same file), literal defaults, literal `Field(...)` constraints (ge, le, pattern, ...)
and aliases. A field that a `mode="before"` or `"wrap"` validator may convert takes any value here.
Anything else (the validators themselves, computed defaults, types from elsewhere) is left to the
build itself, which validates against the real model.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
from typing import Any, Literal, Optional, cast

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

CONSTRAINTS = {
    "ge",
    "gt",
    "le",
    "lt",
    "multiple_of",
    "min_length",
    "max_length",
    "pattern",
    "description",
    "title",
    "examples",
    "strict",
    "allow_inf_nan",
    "max_digits",
    "decimal_places",
    "alias",
    "validation_alias",
}
# Validators that see the raw input: the field's declared type says nothing about what they accept.
_RAW_VALIDATORS = {
    "field_validator": "mode",
    "validator": "pre",
    "model_validator": "mode",
    "root_validator": "pre",
}
_RAW_MODES = ("before", "wrap", "plain", True)
_ANNOTATED_VALIDATORS = {"BeforeValidator", "WrapValidator", "PlainValidator"}
SIMPLE_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "bytes": bytes,
    "Any": Any,
    "None": None,
}
_UNKNOWN = object()


def is_model_class(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> bool:
    for base in node.bases:
        name = _dotted(base) or ""
        if name.rsplit(".", 1)[-1] == "BaseModel":
            return True
        if name in classes and name != node.name and is_model_class(classes[name], classes):
            return True
    return False


def build_model(name: str, classes: dict[str, ast.ClassDef]) -> type[BaseModel]:
    """The pydantic model for class `name` (a BaseModel subclass among `classes`), for listings."""
    return _Builder(classes).model(name)


def checkable_model(name: str, classes: dict[str, ast.ClassDef]) -> type[BaseModel] | None:
    """The model to check and type submitted values with; None when what decides validity cannot
    be read from source (an alias generator, a v1 `class Config`, a computed alias or setting):
    the build then checks them against the real model. Raises what build_model raises."""
    builder = _Builder(classes)
    model = builder.model(name)
    return None if builder.unsure else model


def describe_errors(function: str, errors: list[Any]) -> str:
    """`box(): parameter 'width': Input should be greater than 0 (got -5)` for each error."""
    parts = []
    for error in errors:
        field = ".".join(str(p) for p in error.get("loc", ())) or "(all)"
        text = f"parameter {field!r}: {error.get('msg', 'invalid')}"
        if error.get("type") not in ("missing", "extra_forbidden") and "input" in error:
            text += f" (got {error['input']!r})"
        parts.append(text)
    return f"{function}(): " + "; ".join(parts)


def field_listing(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field as {name, annotation, has_default, default, required, constraints} for inspect."""
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        constraints = extra.get("constraints") or _constraints(info)
        required = info.is_required()
        known = not required and info.default is not _UNKNOWN
        out.append(
            {
                "name": name,
                "annotation": extra.get("annotation") or _type_name(info.annotation),
                "has_default": not required,
                "default": info.default if known else None,
                "default_source": None if known else extra.get("default_source"),
                "required": required,
                "constraints": constraints,
                "description": info.description,
            }
        )
    return out


def _constraints(info: Any) -> dict[str, Any]:
    constraints: dict[str, Any] = {}
    for meta in info.metadata:
        if dataclasses.is_dataclass(meta):
            pairs = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
        else:
            pairs = dict(getattr(meta, "__dict__", {}))
        constraints.update({k: v for k, v in pairs.items() if v is not None})
    return constraints


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


class _Builder:
    def __init__(self, classes: dict[str, ast.ClassDef]) -> None:
        self.classes = classes
        self.built: dict[str, type[BaseModel]] = {}
        self.raw: dict[str, set[str]] = {}  # per model, the fields raw validators see
        self.unsure = False  # something that decides validity could not be read

    def model(self, name: str) -> type[BaseModel]:
        if name in self.built:
            return self.built[name]
        node = self.classes[name]
        fields: dict[str, Any] = {}
        raw: set[str] = set()
        config: dict[str, Any] = {"extra": "forbid"}  # a misspelt parameter is a mistake
        for base in node.bases:
            base_name = _dotted(base)
            if base_name in self.classes and base_name != name:
                parent = self.model(base_name)
                fields.update({n: (f.annotation, f) for n, f in parent.model_fields.items()})
                config.update({k: v for k, v in parent.model_config.items() if k in _CONFIG_KEYS})
                raw |= self.raw[base_name]
        raw |= _raw_validated(node)
        class_keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}  # class P(BaseModel, k=v)
        config.update(self._config(class_keywords))
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                class_var = _dotted(stmt.annotation) in ("ClassVar", "typing.ClassVar")
                if stmt.target.id.startswith("_") or class_var:
                    continue
                fields[stmt.target.id] = self._field(stmt.annotation, stmt.value)
            elif _assigns(stmt, "model_config"):
                config.update(self._config(_pairs(stmt.value)))  # type: ignore[attr-defined]  # _assigns: it has .value
            elif isinstance(stmt, ast.ClassDef) and stmt.name == "Config":  # pydantic v1 style
                self.unsure = True
        for field in fields if "*" in raw else raw & set(fields):
            fields[field] = _any_value(*fields[field])
        settings = cast(ConfigDict, dict(config))  # its keys are _CONFIG_KEYS, checked in _config
        model = create_model(name, __config__=settings, **fields)
        self.built[name], self.raw[name] = model, raw
        return model

    def _config(self, pairs: dict[str, ast.expr]) -> dict[str, Any]:
        """What model settings say that decides which inputs are valid."""
        if "alias_generator" in pairs:
            self.unsure = True
        config = {}
        for key in _CONFIG_KEYS:
            if key in pairs:
                v = _literal(pairs[key])
                if v in ("allow", "ignore", "forbid") if key == "extra" else isinstance(v, bool):
                    config[key] = v
                else:  # e.g. `Extra.allow`
                    self.unsure = True
        return config

    def _field(self, annotation: ast.expr, value: ast.expr | None) -> tuple[Any, Any]:
        field = self._declared(annotation, value)
        return _any_value(*field) if _validated_in(annotation) else field

    def _declared(self, annotation: ast.expr, value: ast.expr | None) -> tuple[Any, Any]:
        kind, info = self._annotation(annotation)
        if value is None:
            return kind, info if info is not None else ...
        if isinstance(value, ast.Call) and _dotted(value.func) in ("Field", "pydantic.Field"):
            return kind, self._field_call(value, info)
        literal = _literal(value)
        if literal is _UNKNOWN:  # e.g. `Color.RED`: optional, its value known only to the build
            default = Field(default=_UNKNOWN, json_schema_extra={"default_source": ast.unparse(value)})
        else:
            default = Field(default=literal)
        # `x: Annotated[float, Field(alias="w")] = 3`: the alias and the default both count.
        return kind, default if info is None else FieldInfo.merge_field_infos(info, default)

    def _field_call(self, call: ast.Call, info: Any) -> Any:
        kwargs: dict[str, Any] = {}
        if call.args:
            kwargs["default"] = _literal(call.args[0])  # `...` stays `...`: required
        for kw in call.keywords:
            if kw.arg == "default":
                kwargs["default"] = _literal(kw.value)
            elif kw.arg == "default_factory":
                kwargs["default"] = _UNKNOWN  # computed at run time: optional, value unknown here
                kwargs["json_schema_extra"] = {"default_source": f"{ast.unparse(kw.value)}()"}
            elif kw.arg in CONSTRAINTS and (v := _literal(kw.value)) is not _UNKNOWN:
                kwargs[kw.arg] = v
            elif kw.arg in ("alias", "validation_alias"):  # e.g. AliasChoices(...): not rebuilt
                self.unsure = True
        return Field(**kwargs)

    def _annotation(self, node: ast.expr) -> tuple[Any, Any]:
        """(type, FieldInfo from Annotated[..., Field(...)] or None)."""
        if isinstance(node, ast.Subscript) and _dotted(node.value) in ("Annotated", "typing.Annotated"):
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            kind = self._type(items[0])
            for extra in items[1:]:
                if isinstance(extra, ast.Call) and _dotted(extra.func) in ("Field", "pydantic.Field"):
                    return kind, self._field_call(extra, None)
            return kind, None
        return self._type(node), None

    def _type(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and node.value is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
            try:
                return self._type(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return Any
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._type(node.left) | self._type(node.right)
        name = _dotted(node.value if isinstance(node, ast.Subscript) else node)
        short = (name or "").rsplit(".", 1)[-1]
        if not isinstance(node, ast.Subscript):
            if short in SIMPLE_TYPES:
                return SIMPLE_TYPES[short]
            if name in self.classes:
                return self._class_type(name)
            return Any
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if short == "Literal":
            values = [_literal(i) for i in items]
            return Literal[tuple(values)] if _UNKNOWN not in values else Any
        if short == "Optional":
            return Optional[self._type(items[0])]  # noqa: UP045 - built at run time
        if short in ("list", "List", "set", "Set", "frozenset", "Sequence"):
            return list[self._type(items[0])]  # type: ignore[misc]  # a type made at run time
        if short in ("tuple", "Tuple"):
            return tuple[tuple(self._type(i) for i in items)] if items else tuple  # type: ignore[misc]  # run-time type
        if short in ("dict", "Dict", "Mapping") and len(items) == 2:
            return dict[self._type(items[0]), self._type(items[1])]  # type: ignore[misc]  # a type made at run time
        if short == "Union":
            kinds = [self._type(i) for i in items]
            result = kinds[0]
            for kind in kinds[1:]:
                result = result | kind
            return result
        if short == "Annotated":
            return Any if _validated_in(node) else self._type(items[0])
        return Any

    def _class_type(self, name: str) -> Any:
        node = self.classes[name]
        if is_model_class(node, self.classes):
            return self.model(name)
        bases = {(_dotted(b) or "").rsplit(".", 1)[-1] for b in node.bases}
        if bases & {"Enum", "StrEnum", "IntEnum", "IntFlag"}:
            members = {
                s.targets[0].id: _literal(s.value)
                for s in node.body
                if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
            }
            values = [v for n, v in members.items() if not n.startswith("_")]  # not `_order_`
            if not values or any(v is _UNKNOWN or isinstance(v, tuple) for v in values):
                return Any  # a computed or labelled member (a custom __new__): its value is unknown here
            if bases & {"IntEnum", "IntFlag", "int"}:
                if not all(type(v) is int for v in values):
                    return Any
                # As the real one, it takes "2" for 2 (a Literal would not).
                return enum.IntEnum(name, {f"m{i}": v for i, v in enumerate(values)})
            return Literal[tuple(values)]
        return Any


_CONFIG_KEYS = ("extra", "populate_by_name", "validate_by_name", "validate_by_alias")


def _pairs(value: ast.expr) -> dict[str, ast.expr]:
    """The settings of `ConfigDict(...)` or a dict literal."""
    if isinstance(value, ast.Call):
        return {kw.arg: kw.value for kw in value.keywords if kw.arg}
    if isinstance(value, ast.Dict):
        return {_literal(k): v for k, v in zip(value.keys, value.values, strict=True) if k is not None}
    return {}


def _validated_in(annotation: ast.expr) -> bool:
    """Whether an `Annotated[...]` in the annotation carries a Before-, Wrap- or PlainValidator."""
    return any(
        isinstance(n, ast.Call) and (_dotted(n.func) or "").rsplit(".", 1)[-1] in _ANNOTATED_VALIDATORS
        for n in ast.walk(annotation)
    )


def _raw_validated(node: ast.ClassDef) -> set[str]:
    """The fields that validators running before type validation see ("*": all of them)."""
    names: set[str] = set()
    for stmt in node.body:
        if not isinstance(stmt, ast.FunctionDef):
            continue
        for decorator in stmt.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            kind = (_dotted(decorator.func) or "").rsplit(".", 1)[-1]
            if kind not in _RAW_VALIDATORS:
                continue
            flag = next(
                (_literal(k.value) for k in decorator.keywords if k.arg == _RAW_VALIDATORS[kind]), None
            )
            if flag not in (*_RAW_MODES, _UNKNOWN):  # unreadable: assume the worst
                continue
            if kind in ("model_validator", "root_validator"):
                return {"*"}
            fields = [_literal(a) for a in decorator.args]
            if not all(isinstance(f, str) for f in fields):  # e.g. `*NAMES`
                return {"*"}
            names |= set(fields)
    return names


def _any_value(annotation: Any, info: Any) -> tuple[Any, Any]:
    """A field as any value, keeping its default, alias and description, and its declared type
    for `farm inspect`."""
    if not isinstance(info, FieldInfo):
        info = FieldInfo(default=info)
    default = info.default if info.default is not PydanticUndefined else ...
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    shown = {"annotation": _type_name(annotation), "constraints": _constraints(info)}
    return Any, Field(
        default=default,
        alias=info.alias,
        validation_alias=info.validation_alias,
        description=info.description,
        json_schema_extra={**shown, **extra},  # a parent's declared type, when it was made Any there
    )


def _assigns(stmt: ast.stmt, name: str) -> bool:
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
    return isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return _UNKNOWN


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None
