"""Request features that only some upstreams can honour: OpenRouter's plugins (`plugins: [{"id": "web"}]`, the
`:online` suffix), output `modalities` beyond text.

Nothing a client asked for is dropped silently: for each candidate the gateway knows which features it cannot honour.
With `provider.require_parameters` such a candidate is excluded (no candidate left: 404 naming the field); otherwise
the request is served without them, and the response header `X-Crossroads-Dropped` and the generation record's
`events` name each one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossroads.routing.registry import Deployment

ONLINE_SUFFIX = ":online"
# Plugins the gateway carries out itself, whatever the upstream: OpenRouter's context compression is middle-out.
GATEWAY_PLUGINS = frozenset({"context-compression"})


def requested_features(body: dict[str, Any]) -> tuple[str, ...]:
    """The names of the optional features `body` asks for ("plugins.web", "modalities.image", ...), or () — the
    common case, answered with two dict lookups."""
    plugins = body.get("plugins")
    modalities = body.get("modalities")
    if not plugins and not modalities:
        return ()
    wanted: list[str] = []
    if isinstance(plugins, list):
        for plugin in plugins:
            name = plugin.get("id") if isinstance(plugin, dict) else None
            if isinstance(name, str) and name not in GATEWAY_PLUGINS and plugin.get("enabled", True) is not False:
                wanted.append(f"plugins.{name}")
    if isinstance(modalities, list):
        wanted.extend(f"modalities.{m}" for m in modalities if isinstance(m, str) and m != "text")
    return tuple(dict.fromkeys(wanted))


def unhonoured(features: tuple[str, ...], dep: Deployment) -> list[str]:
    """Which of `features` `dep` cannot honour. An OpenRouter upstream runs OpenRouter's plugins itself; an output
    modality needs a model that produces it."""
    if not features:
        return []
    vendor = dep.connection.config.vendor
    openrouter = vendor is not None and vendor.key == "openrouter"
    out = []
    for feature in features:
        kind, _, name = feature.partition(".")
        if kind == "plugins" and not openrouter:
            out.append(feature)
        elif kind == "modalities" and name not in dep.model.output_modalities:
            out.append(feature)
    return out


def with_online(body: dict[str, Any]) -> None:
    """The `:online` suffix means OpenRouter's web plugin: add it to the body's plugins (once)."""
    plugins = body.get("plugins")
    plugins = list(plugins) if isinstance(plugins, list) else []
    if not any(isinstance(p, dict) and p.get("id") == "web" for p in plugins):
        plugins.append({"id": "web"})
    body["plugins"] = plugins


def take_online_suffix(body: dict[str, Any], is_known: Callable[[str], bool]) -> None:
    """`model: "x:online"` (and such entries of `models`) means x with the web plugin, unless an id with the suffix
    exists literally."""
    found = False
    model = body.get("model")
    if isinstance(model, str) and model.endswith(ONLINE_SUFFIX) and not is_known(model):
        body["model"] = model[: -len(ONLINE_SUFFIX)]
        found = True
    models = body.get("models")
    if isinstance(models, list) and any(isinstance(m, str) and m.endswith(ONLINE_SUFFIX) for m in models):
        body["models"] = [m[: -len(ONLINE_SUFFIX)] if isinstance(m, str) and m.endswith(ONLINE_SUFFIX)
                          and not is_known(m) else m for m in models]
        found = True
    if found:
        with_online(body)


def without(body: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """A copy of `body` without the features in `dropped` (the upstream must not receive what it cannot honour)."""
    out = dict(body)
    plugins = [p for p in out.get("plugins") or () if not (isinstance(p, dict) and f"plugins.{p.get('id')}" in dropped)]
    if plugins:
        out["plugins"] = plugins
    else:
        out.pop("plugins", None)
    if isinstance(out.get("modalities"), list):
        modalities = [m for m in out["modalities"] if f"modalities.{m}" not in dropped]
        if [m for m in modalities if m != "text"]:
            out["modalities"] = modalities
        else:
            out.pop("modalities", None)
    return out
