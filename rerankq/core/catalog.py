"""Which model versions a producer may send jobs to, and the one rule that turns the name a
caller gives (an alias, a version, a Hugging Face id) into the version that serves it. The SDK,
bulk runs and the gateway all resolve through ``resolve_version``, so they accept and refuse the
same names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from rerankq.core.aliases import AliasTarget, Route
from rerankq.core.contract import close_match
from rerankq.core.live_workers import WorkerPresence
from rerankq.core.registry import ModelManifest, manifest_for
from rerankq.errors import UnknownModel


@dataclass(frozen=True)
class Catalog:
    """What is known right now: manifests (shipped and the user's), live workers, aliases."""

    manifests: Mapping[str, ModelManifest]
    workers: Iterable[WorkerPresence]
    aliases: Mapping[str, AliasTarget]
    served_before: Set[str] = frozenset()  # names a worker served on this Redis (a fleet scaled to zero)

    def known(self) -> list[str]:
        return sorted({*self.manifests, *(worker.model for worker in self.workers), *self.aliases})

    def unknown(self, requested: str) -> UnknownModel:
        """The refusal of a name nothing answers to: the known names, and the one of them (or of
        the manifests' Hugging Face ids) most like it, case aside."""
        hub_ids = [hub_id for manifest in self.manifests.values() for hub_id in manifest.hub_ids()]
        known = self.known()
        return UnknownModel(requested, known, close_match(requested, [*known, *hub_ids]))


def resolve_version(route: Route, catalog: Catalog, default_model: str) -> Route:
    """``route`` (the alias table already applied) to a version: a manifest's name, source or
    hub_id (a Hugging Face id names the manifest of those weights: rerankq.core.registry's
    ``manifest_for``); the configured default model; or a name a worker serves under now or
    served under before (its queue may wait for a worker a fleet scaled to zero starts). Anything
    else is ``UnknownModel`` with the known names and the closest of them."""
    if (manifest := manifest_for(catalog.manifests, route.model)) is not None:
        return Route(manifest.name, route.alias)
    if route.alias is not None or route.model == default_model:
        return route  # an alias's targets and the default are versions by configuration
    if route.model in catalog.served_before or any(worker.model == route.model for worker in catalog.workers):
        return route
    raise catalog.unknown(route.model)
