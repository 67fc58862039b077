"""Import references to the user's own code: ``"module:callable"`` or ``"path/file.py:callable"``.

A train config may name the user's network (``model: mynets:build``) and data
(``dataset: {factory: mynets:load_data}``) by reference instead of a registered name.
This module is the one place that turns such a reference into the object it names:

- **where modules are found**: on ``sys.path`` (PYTHONPATH), in the working directory, and
  beside every config file loaded in this process (:func:`remember_config_dir`); a folder
  that supplies a module is appended to ``sys.path``, so that Ray workers started
  afterwards and pickles of the user's objects find it too;
- **objects passed directly** (``autoprune.train(config, model=MyNet)``) are registered
  under a reference of their own (:func:`reference_of`), found here before any import;
- **trust**: a model file names its reference, and :func:`autoprune.load_model` rebuilds
  the network only from a module the caller allows, or one this process already resolved
  for the user's own config (:func:`is_trusted`). Nothing here imports a module a model
  file names unless one of those holds;
- **shipping**: :func:`runtime_env` lists the user's modules resolved so far as Ray
  ``py_modules``, so a search on a cluster runs them on every node.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, UserError

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CONFIG_DIRS: list[Path] = []
_LIVE: dict[str, Any] = {}
_TRUSTED: set[str] = set()
_SHIPPED: dict[str, Path] = {}
SHIPPED_FILES_ENV = "AUTOPRUNE_SHIPPED_FILES"


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``module`` is a dotted module name or a ``.py`` file path."""

    text: str
    module: str
    attr: str

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")

    @property
    def root(self) -> str:
        """What trust is granted to: the top-level package, or the file's absolute path."""
        return self.module if self.is_file else self.module.split(".")[0]


def is_reference(text: Any) -> bool:
    """Whether ``text`` is written as an import reference (registered names have no ':')."""
    return isinstance(text, str) and ":" in text


def parse_reference(text: str, key: str) -> Reference:
    """Split and check ``"module:attr"`` syntactically (nothing is imported)."""
    module, _, attr = text.strip().rpartition(":")
    attr_ok = bool(attr) and all(part.isidentifier() for part in attr.split("."))
    module_ok = module.endswith(".py") or bool(_MODULE.fullmatch(module))
    if not (module and attr_ok and module_ok):
        raise ConfigError(f"{key}: {text!r} is not an import reference; write "
                          "'module:callable' or 'path/to/file.py:callable'")
    return Reference(f"{module}:{attr}", module, attr)


def normalise(text: str, key: str) -> str:
    """The reference as a config keeps it: a file path made absolute (found as
    :func:`resolve` finds it), so that it means the same in any working directory."""
    ref = parse_reference(text, key)
    if ref.text in _LIVE or not ref.is_file:
        return ref.text
    return f"{_find_file(ref, key)}:{ref.attr}"


# --- where modules are found ----------------------------------------------------------


def remember_config_dir(path: str | os.PathLike[str]) -> None:
    """Look for modules beside the config file ``path`` too (latest file first)."""
    folder = Path(path).expanduser().resolve().parent
    if folder in _CONFIG_DIRS:
        _CONFIG_DIRS.remove(folder)
    _CONFIG_DIRS.append(folder)


def _search_dirs() -> list[Path]:
    return list(dict.fromkeys([Path.cwd(), *reversed(_CONFIG_DIRS)]))


def _find_file(ref: Reference, key: str) -> Path:
    path = Path(ref.module).expanduser()
    candidates = [path] if path.is_absolute() else [d / path for d in _search_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    shipped = _shipped_file(path)
    if shipped is not None:  # a Ray worker on a node without the driver's file
        return shipped
    raise ConfigError(f"{key}: file {ref.module!r} of {ref.text!r} not found (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)})")


def _import(ref: Reference, key: str) -> Any:
    if ref.is_file:
        return _import_file(_find_file(ref, key), key)
    top = ref.module.split(".")[0]
    try:
        return importlib.import_module(ref.module)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise _import_failed(ref, key, exc) from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything
        raise _import_failed(ref, key, exc) from None
    for folder in _search_dirs():
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
            importlib.invalidate_caches()
            try:
                return importlib.import_module(ref.module)
            except Exception as exc:  # noqa: BLE001
                raise _import_failed(ref, key, exc) from None
    where = ", ".join(str(d) for d in _search_dirs())
    hint = "; 'autoprune models' lists registered names" if key == "model" else ""
    raise ConfigError(f"{key}: cannot import module {ref.module!r} of {ref.text!r} (looked on "
                      f"PYTHONPATH and in {where}){hint}")


def _import_file(path: Path, key: str) -> Any:
    digest = hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()
    name = f"autoprune_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{key}: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        del sys.modules[name]
        raise _import_failed(Reference(f"{path}:?", str(path), "?"), key, exc) from None
    return module


def _import_failed(ref: Reference, key: str, exc: BaseException) -> ConfigError:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return ConfigError(f"{key}: importing {ref.module!r} failed: {type(exc).__name__}: {text}")


# --- resolving ------------------------------------------------------------------------


def resolve(text: str, key: str, *, trusted: bool = True) -> Callable[..., Any]:
    """The callable ``text`` names: a registered live object, else imported.

    ``trusted``: the reference comes from the user's own config or call (not from a
    model file), so its module is trusted by this process from now on."""
    ref = parse_reference(text, key)
    if ref.text in _LIVE:
        return _LIVE[ref.text]
    if ref.module == "__main__":
        raise ConfigError(f"{key}: {ref.text!r} was passed from Python (a notebook or script); "
                          "pass it again (autoprune.train(..., model=...)) or move it into a "
                          "module and write 'module:callable'")
    module = _import(ref, key)
    obj: Any = module
    for part in ref.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{key}: module {ref.module!r} has no attribute "
                              f"{ref.attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{key}: {ref.text!r} is a {type(obj).__name__}, not a callable")
    if trusted:
        _TRUSTED.add(_trust_key(ref, key))
        _remember_origin(ref, module)
    return obj


def reference_of(obj: Any) -> str:
    """The reference of a callable passed directly: ``module:qualname`` when that imports
    back to the same object, else a name for this process only (``__main__:MyNet``)
    under which :func:`register` keeps it."""
    module = getattr(obj, "__module__", None) or "__main__"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qualname is None or "<" in qualname:  # a lambda or a function defined in a function
        qualname = f"{type(obj).__name__}_{id(obj):x}"
        return f"__main__:{qualname}"
    return f"{module}:{qualname}"


def importable(obj: Any) -> bool:
    """Whether ``reference_of(obj)`` imports back to ``obj`` in another process too."""
    ref = parse_reference(reference_of(obj), "reference")
    if ref.module == "__main__" or ref.module not in sys.modules:
        return False
    found: Any = sys.modules[ref.module]
    for part in ref.attr.split("."):
        found = getattr(found, part, None)
    return found is obj


def register(obj: Any) -> str:
    """Keep ``obj`` (a callable passed directly) under its reference; returns it."""
    if not callable(obj):
        raise UserError(f"expected a class or function, got a {type(obj).__name__}")
    text = reference_of(obj)
    _LIVE[text] = obj
    _TRUSTED.add(text)
    return text


def as_reference(value: Any, key: str) -> Any:
    """A config value with a callable in place of a reference turned into its reference
    (and registered); anything else unchanged."""
    if callable(value) and not isinstance(value, (str, type(None))):
        return register(value)
    return value


# --- trust ------------------------------------------------------------------------------


def _trust_key(ref: Reference, key: str) -> str:
    return str(_find_file(ref, key)) if ref.is_file else ref.root


def is_trusted(text: str, trust: Iterable[str] = ()) -> bool:
    """Whether the code ``text`` names may be imported and called on behalf of a model
    file: a registered live object, a module in ``trust`` (a package covers its
    submodules; a file by its path, which also trusts the module of that name and looks
    for it there), or one this process resolved for the user's own config or call."""
    ref = parse_reference(text, "reference")
    if ref.text in _LIVE:
        return True
    allowed = set(_TRUSTED)
    for item in trust:
        allowed.add(str(Path(item).expanduser().resolve()) if item.endswith(".py") else item)
    if ref.is_file:
        path = Path(ref.module).expanduser()
        return path.is_absolute() and str(path.resolve()) in allowed
    files = [Path(t) for t in allowed if t.endswith(".py")]
    if any(f.stem == ref.root for f in files):  # trust=["path/to/mynets.py"] for "mynets:..."
        for f in files:
            if f.stem == ref.root:
                remember_config_dir(f)  # found there
        return True
    return any(ref.module == t or ref.module.startswith(t + ".") for t in allowed)


# --- shipping to Ray workers -----------------------------------------------------------


def _remember_origin(ref: Reference, module: Any) -> None:
    """Record the file or package folder of a user module (not an installed one)."""
    if ref.is_file:  # shipped as a single-file module, found by its path on other nodes
        origin = Path(module.__file__).resolve()
        _SHIPPED[str(origin)] = origin
        return
    top = sys.modules.get(ref.root, module)
    paths = list(getattr(top, "__path__", []) or [])
    origin = Path(paths[0]) if len(paths) == 1 else Path(getattr(top, "__file__", "") or "")
    if not origin.name or _installed(origin) or ref.root == "autoprune":
        return
    _SHIPPED[ref.root] = origin


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    resolved = path.resolve()
    return any(resolved.is_relative_to(Path(r).resolve()) for r in roots if r)


def runtime_env() -> dict[str, Any] | None:
    """A Ray ``runtime_env`` shipping the user's modules resolved so far (``py_modules``:
    each single-file module or package folder), or None when there are none.

    A module named by its file path (``path/to/mynets.py:build``) is shipped as the module
    ``mynets``; ``AUTOPRUNE_SHIPPED_FILES`` tells the workers which path it stands for."""
    modules = sorted({str(p) for p in _SHIPPED.values() if p.exists()})
    if not modules:
        return None
    files = {key: Path(key).stem for key in _SHIPPED if key.endswith(".py")}
    names = [Path(m).stem if m.endswith(".py") else Path(m).name for m in modules]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(f"two of your modules would reach the Ray workers as {clash[0]!r} "
                        f"({', '.join(m for m, n in zip(modules, names) if n == clash[0])}): "
                        "rename one")
    env: dict[str, Any] = {"py_modules": modules}
    if files:
        env["env_vars"] = {SHIPPED_FILES_ENV: json.dumps(files, sort_keys=True)}
    return env


def _shipped_file(path: Path) -> Path | None:
    """On a Ray worker: where the single-file module shipped for the driver's ``path`` is."""
    files = json.loads(os.environ.get(SHIPPED_FILES_ENV) or "{}")
    name = files.get(str(path))
    spec = importlib.util.find_spec(name) if isinstance(name, str) else None
    return Path(spec.origin) if spec is not None and spec.origin else None


__all__ = ["Reference", "as_reference", "importable", "is_reference", "is_trusted",
           "normalise", "parse_reference", "reference_of", "register", "remember_config_dir",
           "resolve", "runtime_env"]
