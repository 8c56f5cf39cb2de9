"""The names of Celery and kombu that rerankq's worker relies on outside their documented APIs,
and the start-up check that refuses a worker whose libraries lack one.

rerankq's delivery promise (every message held under a named worker, a dead worker's jobs back
in seconds, the first result standing: rerankq.worker.safe_transport, .recovery, .results) has
no public extension point in kombu's Redis transport, so it overrides the transport's poll. Each
such name is a promise about the next release of a library; ``HOOKS`` lists them, and
``require_supported_libraries`` checks before the model loads that

- celery, kombu and redis-py are inside the ranges rerankq declares (pyproject.toml: the ranges
  CI runs at both ends, the lock and the lowest versions allowed), and
- every hook exists with the shape it was written against (attribute present, callable, the
  parameters rerankq passes or receives),

so a worker never prints ``ready`` and then dies on its first poll. docs/reliability.md shows
``markdown_table()`` (tests/test_docs.py keeps the two one).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from rerankq.core.constants import KOMBU_PRIORITY_SEP, KOMBU_PRIORITY_STEPS
from rerankq.errors import UnsupportedLibraries

# the distributions whose ranges the check enforces, with the names their users know them by
CHECKED = {"celery": "celery", "kombu": "kombu", "redis": "redis-py"}
Use = Literal["overrides", "calls", "sets", "reads"]


@dataclass(frozen=True)
class Hook:
    """One name rerankq uses. ``params``: a method's parameters after ``self`` as rerankq handles
    them (``**name`` for keywords): an override must take every parameter the library declares
    (its callers may pass any of them), a call needs exactly these. ``value``: what a read
    attribute must hold."""

    owner: str  # "module:Class" or "module"
    name: str
    use: Use
    why: str
    params: tuple[str, ...] | None = None
    value: Any = None

    @property
    def distribution(self) -> str:
        return self.owner.split(".", 1)[0]

    @property
    def label(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.name}"


REDIS_CHANNEL = "kombu.transport.redis:Channel"
REDIS_QOS = "kombu.transport.redis:QoS"
CONSUMER = "celery.worker.consumer:Consumer"
REFUSED = "records the refused message (rerankq.worker.rejections) before Celery drops it"

HOOKS: tuple[Hook, ...] = (
    Hook(
        REDIS_CHANNEL,
        "_brpop_start",
        "overrides",
        "takes a message with CLAIM (pop and record under the worker's name, atomically) instead of BRPOP, "
        "which leaves it in no one's hands",
        ("timeout",),
    ),
    Hook(REDIS_CHANNEL, "_brpop_read", "overrides", "delivers the claimed message", ("**options",)),
    Hook(REDIS_CHANNEL, "_in_poll", "sets", "kombu's poller sends a new wait only while no reply is due"),
    Hook(
        REDIS_CHANNEL,
        "_brpop_sent_at",
        "sets",
        "kombu's health check drops a wait whose reply is overdue; without it a healthy wait looks overdue",
    ),
    Hook(
        REDIS_CHANNEL,
        "_flush_brpop_reauth",
        "calls",
        "sends a rotated credential between waits, as kombu's own read does",
        (),
    ),
    Hook(REDIS_CHANNEL, "sep", "reads", "names a queue's priority lists as kombu does", value=KOMBU_PRIORITY_SEP),
    Hook(
        REDIS_CHANNEL,
        "priority_steps",
        "reads",
        "the priority lists CLAIM and RESTORE take from and put back on",
        value=KOMBU_PRIORITY_STEPS,
    ),
    Hook(
        "kombu.transport.virtual.base:Transport",
        "_deliver",
        "calls",
        "hands a claimed message to Celery",
        ("message", "queue"),
    ),
    Hook(REDIS_QOS, "_delivered", "sets", "forgets messages left claimed when the connection is gone"),
    Hook(REDIS_QOS, "ack", "overrides", "acks only a message the worker still holds", ("delivery_tag",)),
    Hook(REDIS_QOS, "reject", "overrides", "releases the worker's claim", ("delivery_tag", "requeue")),
    Hook(REDIS_QOS, "restore_by_tag", "overrides", "releases the worker's claim", ("tag", "client", "leftmost")),
    Hook(
        REDIS_QOS,
        "restore_unacked",
        "overrides",
        "leaves messages claimed when the connection is gone, instead of dying of it",
        ("client",),
    ),
    Hook(CONSUMER, "on_decode_error", "overrides", REFUSED, ("message", "exc")),
    Hook(CONSUMER, "on_unknown_message", "overrides", REFUSED, ("body", "message")),
    Hook(CONSUMER, "on_unknown_task", "overrides", REFUSED, ("body", "message", "exc")),
    Hook(CONSUMER, "on_invalid_task", "overrides", REFUSED, ("body", "message", "exc")),
    Hook(
        "celery.backends.redis:RedisBackend",
        "set",
        "overrides",
        "stores a state only while no final one is stored: the first result stands",
        ("key", "value", "expires", "**retry_policy"),
    ),
    Hook(
        "celery.backends.redis:RedisBackend",
        "ensure",
        "calls",
        "retries that store on a lost connection, as Celery's own set does",
        ("fun", "args", "**policy"),
    ),
)


def require_supported_libraries() -> None:
    """Raise ``UnsupportedLibraries`` (one line) unless every checked library is in its declared
    range and every hook has the shape it was written against."""
    installed, declared = installed_versions(), declared_ranges()
    problems = range_problems(installed, declared) + hook_problems(HOOKS)
    if problems:
        versions = ", ".join(f"{CHECKED[name]} {installed[name]}" for name in CHECKED)
        supported = ", ".join(f"{name}{declared[name]}" for name in CHECKED if name in declared)
        raise UnsupportedLibraries(versions, "; ".join(problems), supported or "the ranges in pyproject.toml")


def range_problems(installed: dict[str, str], declared: dict[str, SpecifierSet]) -> list[str]:
    return [
        f"{CHECKED[name]} {installed[name]} is outside {name}{declared[name]}"
        for name in CHECKED
        if name in declared and Version(installed[name]) not in declared[name]
    ]


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in CHECKED}


def declared_ranges() -> dict[str, SpecifierSet]:
    """The installed rerankq's own requirements for the checked libraries (its metadata: the one
    home of the ranges is pyproject.toml). Empty for a checkout that was never installed."""
    try:
        requirements = [Requirement(line) for line in metadata.requires("rerankq") or []]
    except metadata.PackageNotFoundError:
        return {}
    return {req.name: req.specifier for req in requirements if req.name in CHECKED and req.marker is None}


def hook_problems(hooks: tuple[Hook, ...]) -> list[str]:
    """What is wrong with each hook; empty when all fit."""
    return [f"{hook.label} {problem}" for hook in hooks if (problem := _problem(hook))]


def _problem(hook: Hook) -> str | None:
    try:
        found = _lookup(hook)
    except (ImportError, AttributeError):
        return "is missing"
    if hook.value is not None:
        return None if _same(found, hook.value) else f"is {found!r}, not {hook.value!r}"
    if hook.params is None:
        return None
    if not callable(found):
        return "is not callable"
    return _params_problem(hook, _params_of(found))


def _lookup(hook: Hook) -> Any:
    module_name, _, class_name = hook.owner.partition(":")
    owner: Any = importlib.import_module(module_name)
    if class_name:
        owner = getattr(owner, class_name)
    sentinel = object()
    found = inspect.getattr_static(owner, hook.name, sentinel)
    if found is sentinel:
        raise AttributeError(hook.name)
    return getattr(owner, hook.name)


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return isinstance(found, list | tuple) and tuple(found) == expected
    return bool(found == expected)


def _params_of(function: Any) -> tuple[str, ...]:
    prefix: dict[Any, str] = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    params = list(inspect.signature(function).parameters.values())
    return tuple(f"{prefix.get(p.kind, '')}{p.name}" for p in params[1:])  # after self


def _params_problem(hook: Hook, params: tuple[str, ...]) -> str | None:
    expected = hook.params or ()
    fits = set(params) <= set(expected) if hook.use == "overrides" else params == expected
    return None if fits else f"takes ({', '.join(params)}), not ({', '.join(expected)})"


def markdown_table() -> str:
    """docs/reliability.md's table of the hooks (tests/test_docs.py compares the two)."""
    rows = ["| hook | rerankq | why | used on |", "|---|---|---|---|"]
    declared = declared_ranges()
    for hook in HOOKS:
        used_on = f"{hook.distribution}{declared.get(hook.distribution, '')}"
        shape = f"({', '.join(hook.params)})" if hook.params is not None else ""
        rows.append(f"| `{hook.label}{shape}` | {hook.use} | {hook.why} | {used_on} |")
    return "\n".join(rows)
