"""The viewer functions a design calls, standing in for ocp_vscode and CQ-editor inside a build.

Scripts written for a viewer call `show(a, b, names=[...], colors=[...])`, `show_object(obj,
name=..., options={"color": ...})`, `show_all()`, `debug(obj)` and `log(text)` (and ocp_vscode's
`push_object(obj, name, color)`), import them from `ocp_vscode` or `cq_editor`, or guard them with
`if "show_object" in locals():`. A build puts them in the script's globals and both modules in
`sys.modules`, and records what was shown, with the name and colour it was shown with, for
workers.scene to sort into what prints and what does not.
"""

from __future__ import annotations

import builtins
import enum
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

RGBA = tuple[float, float, float, float]

# ocp_vscode names that scripts call for the viewer's sake; `from ocp_vscode import *` must find them.
_OCP_VSCODE_NOOPS = (
    "set_port",
    "get_port",
    "set_defaults",
    "get_defaults",
    "reset_defaults",
    "reset_show",
    "show_clear",
    "set_viewer_config",
    "save_screenshot",
    "set_colormap",
    "status",
    "show_objects",  # shows what push_object pushed: recorded as it was pushed
)
SHOW_FUNCTIONS = ("show", "show_object", "show_all", "debug", "log")


@dataclass
class Showing:
    """One object as the script showed it (or returned it)."""

    obj: Any
    name: str | None = None
    color: RGBA | None = None
    debug: bool = False  # CQ-editor's debug(): drawn for the designer, never printed


class Viewer:
    """Records what a script shows."""

    def __init__(self) -> None:
        self.shown: list[Showing] = []

    # -- the functions scripts call ----------------------------------------------------------------
    def show(
        self,
        *objs: Any,
        names: Iterable[str | None] | None = None,
        colors: Iterable[Any] | None = None,
        alphas: Iterable[float | None] | None = None,
        **_: Any,
    ) -> None:
        # Without names, ocp_vscode names each object after the variable holding it; so do we.
        caller = sys._getframe(1)  # here: a comprehension has a frame of its own
        given = list(names) if names is not None else [_variable_name(caller, o) for o in objs]
        tints, opacity = list(colors or []), list(alphas or [])
        for i, obj in enumerate(objs):
            color = to_rgba(tints[i] if i < len(tints) else None, opacity[i] if i < len(opacity) else None)
            self.shown.append(Showing(obj, given[i] if i < len(given) else None, color))

    def show_object(
        self, obj: Any, name: str | None = None, options: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        options = {**(options or {}), **{k: v for k, v in kw.items() if k in ("color", "alpha")}}
        name = name if name is not None else _variable_name(sys._getframe(1), obj)
        self.shown.append(Showing(obj, name, to_rgba(options.get("color"), options.get("alpha"))))

    def debug(self, obj: Any, name: str | None = None, *_: Any, **__: Any) -> None:
        name = name if name is not None else _variable_name(sys._getframe(1), obj)
        self.shown.append(Showing(obj, name, debug=True))

    def show_all(self, variables: dict[str, Any] | None = None, *_: Any, **kw: Any) -> None:
        """Every showable variable of the caller (ocp_vscode's show_all), by its name."""
        exclude = set(kw.get("exclude") or ())
        scope = variables if variables is not None else sys._getframe(1).f_locals
        for name, obj in list(scope.items()):
            if not name.startswith("_") and name not in exclude and showable(obj):
                self.shown.append(Showing(obj, name))

    def push_object(
        self,
        obj: Any,
        name: str | None = None,
        color: Any = None,
        alpha: float | None = None,
        *_: Any,
        **__: Any,
    ) -> None:
        """ocp_vscode's newer incremental call (shown by a later `show_objects()`): named, as there,
        by the argument, else the object's `label`, else its variable."""
        name = (
            name if name is not None else getattr(obj, "label", None) or _variable_name(sys._getframe(1), obj)
        )
        self.shown.append(Showing(obj, name, to_rgba(color, alpha)))

    @staticmethod
    def log(*args: Any, **_: Any) -> None:
        print(*args)  # the build's log

    # -- installing them ---------------------------------------------------------------------------
    def functions(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in SHOW_FUNCTIONS}

    def install(self, namespace: dict[str, Any]) -> None:
        """Into the script's globals (so `"show_object" in locals()` holds at module level), into
        builtins (for the modules it imports) and as the `ocp_vscode` and `cq_editor` modules."""
        for name, func in self.functions().items():
            namespace[name] = func
            setattr(builtins, name, func)
        # Shadows a real ocp_vscode too: there is no viewer to talk to in a worker.
        sys.modules["ocp_vscode"] = self._module("ocp_vscode", noops=True)
        sys.modules["cq_editor"] = self._module("cq_editor", noops=False)

    def _module(self, name: str, noops: bool) -> types.ModuleType:
        module = types.ModuleType(name)
        for attr, func in self.functions().items():
            setattr(module, attr, func)
        if noops:
            Camera = enum.Enum("Camera", "RESET CENTER KEEP ISO TOP BOTTOM LEFT RIGHT FRONT REAR")
            Collapse = enum.Enum("Collapse", "NONE ROOT LEAVES ALL")
            vars(module).update(Camera=Camera, Collapse=Collapse)
            for attr in _OCP_VSCODE_NOOPS:
                setattr(module, attr, _noop)
            # A module-level __getattr__ answers any other name ocp_vscode has, as the real one would.
            vars(module).update(push_object=self.push_object, __getattr__=_noop_attribute)
        return module


def _noop(*_: Any, **__: Any) -> None:
    return None


def _noop_attribute(name: str) -> Callable[..., None]:
    # Any other viewer function is a no-op too; dunders stay missing (`import *` asks for __all__).
    if name.startswith("__"):
        raise AttributeError(name)
    return _noop


def _variable_name(frame: types.FrameType, obj: Any) -> str | None:
    """The caller's variable holding `obj`, the name a viewer would show it under."""
    for name, value in frame.f_locals.items():
        if value is obj and not name.startswith("_"):
            return name
    return None


def showable(obj: Any) -> bool:
    """What show_all picks up: shapes, builders and raw OCP shapes, and lists of them."""
    import build123d as bd

    if isinstance(obj, bd.Shape | bd.Builder):
        return True
    if type(obj).__module__.startswith("OCP.") and type(obj).__name__.startswith("TopoDS_"):
        return True
    return isinstance(obj, list | tuple) and bool(obj) and all(showable(o) for o in obj)


def to_rgba(color: Any, alpha: float | None = None) -> RGBA | None:
    """A colour as viewers take it: a name ("red"), "#RRGGBB[AA]", (r, g, b[, a]) in 0..1 or
    0..255 (CQ-editor), or a build123d Color; None when it is none of those."""
    import build123d as bd

    if color is None:
        return None
    try:
        if isinstance(color, list | tuple):
            values = [float(c) for c in color]
            if len(values) not in (3, 4):
                return None
            if any(v > 1 for v in values[:3]):
                values = [v / 255 for v in values[:3]] + values[3:]
            rgba = bd.Color(*values)
        else:
            rgba = color if isinstance(color, bd.Color) else bd.Color(color)
        r, g, b, a = (float(c) for c in tuple(rgba))
    except Exception:  # a colour no one can read: the object prints, uncoloured
        return None
    return (r, g, b, float(alpha) if alpha is not None else a)
