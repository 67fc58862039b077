"""Save and reload pruned (or grown) networks without pickled code.

A pruned network differs from its registered architecture only in the sizes of its
layers and in residual branches replaced by identities. A model file therefore holds
plain data: the registry name and build arguments (for the user's own network: its import
reference and kwargs), the shape attributes of every resized layer, the names of removed
branches, and the state dict. Loading rebuilds the architecture from the registry (or, for
the user's network, from code the caller allows), applies the recorded shapes and reloads
the weights with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError

FORMAT = "autoprune-model/1"

# Attributes that define a layer's shape, per layer type.
_SHAPE_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.PReLU: ("num_parameters",),
}


def build_info(model: nn.Module) -> dict[str, Any]:
    """The registry arguments a model was built with (set by the engine)."""
    info = getattr(model, "autoprune_build", None)
    if info is None:
        raise ValueError("model was not built through autoprune.models.create_model")
    return dict(info)


def architecture_spec(model: nn.Module) -> dict[str, Any]:
    """Plain-data description of the current architecture (JSON-serialisable)."""
    layers: dict[str, dict[str, Any]] = {}
    identities = []
    for name, module in model.named_modules():
        if getattr(module, "autoprune_removed", False):
            identities.append(name)
        for kind, attrs in _SHAPE_ATTRS.items():
            if type(module) is kind:
                layers[name] = {a: _plain(getattr(module, a)) for a in attrs}
    return {"build": build_info(model), "layers": layers, "identities": identities}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def apply_spec(model: nn.Module, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Reshape a freshly built model to ``spec`` so that ``state`` loads strictly."""
    for name in spec.get("identities", []):
        model.set_submodule(name, removed_identity())
    named = dict(model.named_modules())
    for name, attrs in spec["layers"].items():
        module = named.get(name)
        if module is None:
            raise UserError(f"model file names a layer {name!r} the architecture does not have")
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, tensor in list(module.named_parameters(recurse=False)):
            saved = state.get(prefix + pname)
            if saved is not None and saved.shape != tensor.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(saved)))
        for bname, buf in list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + bname)
            if saved is not None and buf is not None and saved.shape != buf.shape:
                setattr(module, bname, torch.empty_like(saved))


def removed_identity() -> nn.Identity:
    """The identity that stands in for a removed residual branch (recorded in the spec)."""
    ident = nn.Identity()
    ident.autoprune_removed = True  # type: ignore[assignment]
    return ident


def save_model(model: nn.Module, path: str | os.PathLike[str],
               input_shape: tuple[int, ...] | None = None) -> None:
    """Write ``model`` (any pruned or grown shape) to ``path``, atomically. ``input_shape``
    (one sample's shape, e.g. ``(1, 28, 28)``) lets exports and latency measurements
    build inputs without the dataset."""
    shape = input_shape or getattr(model, "autoprune_input_shape", None)
    payload = {
        "format": FORMAT,
        "input_shape": [int(d) for d in shape] if shape else None,
        "spec": architecture_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_save(payload, Path(path))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    trust: Iterable[str] | str = (),
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Reload a model saved by autoprune, in its pruned shape, in eval mode.

    ``model.autoprune_input_shape`` is one sample's shape when the file records it (files
    written before it did: ``None``). A registered network is rebuilt from the model
    registry; nothing is unpickled but tensors and plain containers.

    The user's own network (built by an import reference, recorded in the file with its
    kwargs) needs its code: the recorded layer shapes resize the layers the code builds,
    but the forward pass is code. It is rebuilt only by ``factory`` (the builder itself)
    or from a module the caller allows, ``trust=["mynets"]`` (a package covers its
    submodules; a ``.py`` reference by its path), or one this process already resolved for
    the user's own config or call; otherwise a UserError names the reference. A model
    file never makes autoprune import or call anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or one holding code objects
        kind = exc.__class__.__name__
        raise UserError(f"{path} is not an autoprune model file ({kind})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an autoprune model file")
    spec, state = payload["spec"], payload["state_dict"]
    model = _rebuild(spec["build"], path, [trust] if isinstance(trust, str) else list(trust),
                     factory)
    model.autoprune_build = dict(spec["build"])  # type: ignore[assignment]
    apply_spec(model, spec, state)
    model.load_state_dict(state, strict=True)
    shape = payload.get("input_shape")
    model.autoprune_input_shape = tuple(shape) if shape else None  # type: ignore[assignment]
    return model.to(map_location).eval()


def _rebuild(build: dict[str, Any], path: Path, trust: list[str],
             factory: Callable[..., nn.Module] | None) -> nn.Module:
    """The architecture as built before training: the registry's, or the user's code."""
    if "reference" not in build:
        from autoprune.models import create_model

        return create_model(**build)
    from autoprune.models.user import build_user_model
    from autoprune.references import is_trusted, parse_reference

    ref = str(build["reference"])
    if factory is None and not is_trusted(ref, trust):
        root = parse_reference(ref, "model").root
        raise UserError(f"{path} holds a network built by {ref!r}, code autoprune does not "
                        f"import unless you allow it: load_model(path, trust=[{root!r}]) "
                        f"(commands: --trust {root}) or load_model(path, "
                        "factory=<the builder>)")
    with torch.device("cpu"):
        return build_user_model(ref, dict(build.get("kwargs") or {}), int(build["num_classes"]),
                                int(build["in_channels"]), _size(build["input_size"]), factory)


def _size(value: Any) -> int | tuple[int, int]:
    return int(value) if isinstance(value, int) else (int(value[0]), int(value[1]))
