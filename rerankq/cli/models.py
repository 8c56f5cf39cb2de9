"""``rerankq models``: list model versions, check custom weights, compare two versions, move aliases."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, cast

import redis
import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from rerankq.cli.extras import needs_extra
from rerankq.cli.support import (
    EXIT_FAILED,
    EXIT_USAGE,
    App,
    BackendOption,
    Kind,
    MaxLength,
    RedisUrl,
    apply_settings,
    one_of,
)
from rerankq.core.aliases import (
    AliasTarget,
    alias_history,
    delete_alias,
    parse_split,
    rollback_alias,
    set_alias,
    static_aliases,
    stored_aliases,
)
from rerankq.core.live_workers import WorkerPresence, read_live, serving
from rerankq.core.redis_clients import connect
from rerankq.core.registry import ModelKind, ModelManifest, load_manifests
from rerankq.core.settings import BACKENDS, BackendName, Settings, get_settings
from rerankq.errors import InvalidRequest, ModelCheckFailed

models_app = App(
    help="Model versions: check custom weights, compare versions, aliases.", no_args_is_help=True, path="rerankq models"
)
alias_app = App(
    help="Aliases: point a name at a version, split traffic, roll back.",
    no_args_is_help=True,
    path="rerankq models alias",
)
models_app.add_typer(alias_app, name="alias")
console = Console(highlight=False, soft_wrap=True)
PIPED_WIDTH = 10_000  # piped output (grep, a file, CI logs) is as wide as its cells: no table is cut
NO_ALIASES = "no aliases (rerankq models alias set ALIAS VERSION)"

Json = Annotated[bool, typer.Option("--json", help="One JSON object.")]
Device = Annotated[str, typer.Option(help="auto, cuda or cpu: check on the device (and dtype) that will serve.")]
Golden = Annotated[
    Path | None, typer.Option(help="A golden-set file (JSON Lines; default: the shipped English + Chinese set).")
]


ModelOption = Annotated[
    str, typer.Option("--model", help="A folder of weights, a registry name, or a Hugging Face id.")
]


@models_app.command("check")
def check(
    model: ModelOption,
    kind: Kind = None,
    device: Device = "auto",
    golden: Golden = None,
    languages: Annotated[
        str | None, typer.Option(help="Comma-separated golden-set languages the model must rank (default: manifest's).")
    ] = None,
    max_length: MaxLength = None,
    backend: BackendOption = None,
    check_ranking: Annotated[
        bool,
        typer.Option(
            "--check-ranking/--no-check-ranking",
            help="The golden-ranking check (on); off only for random-weight models, to reach the checks after it.",
        ),
    ] = True,
) -> None:
    """Check a model in order, stopping at the first failure: config, tokenizer, weights,
    architecture, outputs on the golden set, golden ranking; with an ONNX backend, the export
    against torch (onnx-int8: the int8 gate). Exit status 0 when all pass, 1 when a
    check fails, 2 when the model cannot be found or loaded, 3 when the hub cannot be reached."""
    with needs_extra("models check", "worker"):
        from rerankq.worker.golden import GoldenSetError, load_golden
        from rerankq.worker.loading import load_checked, pick_device, resolve_model

    try:
        items = load_golden(golden)
    except GoldenSetError as e:
        raise InvalidRequest("--golden", str(e)) from e
    manifest = resolve_model(model, None, get_settings(), cast(ModelKind | None, kind))
    if languages:
        manifest = manifest.model_copy(update={"languages": languages.split(",")})
    target = pick_device(device)
    settings = apply_settings(backend=backend)
    console.print(f"checking {manifest.name} ({manifest.source}) on {target} with {settings.backend}")
    try:
        load_checked(
            manifest,
            target,
            max_length=max_length,
            golden=items,
            check_ranking=check_ranking,
            served_by=settings.backend,
            settings=settings,
            report=lambda passed: console.print(f"[green]✓[/] {passed.check:<14} {passed.detail}"),
        )
    except ModelCheckFailed as e:
        console.print(f"[red]✗[/] {e.check:<14} {e.problem}\n  [bold]fix:[/] {e.fix}")
        raise typer.Exit(EXIT_FAILED) from e
    console.print(f"[green]all checks passed[/]: {manifest.name} can serve")


@models_app.command("diff")
def diff(
    a: Annotated[str, typer.Option("--model", help="The serving version: folder, registry name or Hugging Face id.")],
    b: Annotated[
        str | None,
        typer.Option("--candidate", help="The version to compare with it, named the same way (default: --model)."),
    ] = None,
    backend: BackendOption = None,
    candidate_backend: Annotated[
        str | None,
        typer.Option(
            callback=one_of(BACKENDS),
            help="What runs the candidate's forward passes (default: --backend); e.g. onnx-int8 against torch.",
        ),
    ] = None,
    kind: Kind = None,
    golden: Golden = None,
    device: Device = "auto",
    top: Annotated[int, typer.Option(min=1, help="How many of the largest score changes to list.")] = 5,
    min_spearman: Annotated[
        float | None, typer.Option(help="Exit with status 1 when Spearman's rank correlation is below this.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Score a golden set with both versions (two models, or one model on two backends): rank
    correlation, items each ranks right, and the pairs whose score changed most."""
    with needs_extra("models diff", "worker"):
        from rerankq.worker.golden import GoldenSetError, load_golden
        from rerankq.worker.loading import load_backend, pick_device, resolve_model
        from rerankq.worker.model_diff import diff_models

    settings = get_settings()
    try:
        items = load_golden(golden)
    except GoldenSetError as e:
        raise InvalidRequest("--golden", str(e)) from e
    target = pick_device(device)
    first = cast(BackendName, backend or settings.backend)
    sides = [(a, first), (b or a, cast(BackendName, candidate_backend or first))]
    held = cast(ModelKind | None, kind)
    loaded = [load_backend(resolve_model(spec, None, settings, held), target, None, on, settings) for spec, on in sides]
    report = diff_models(loaded[0], loaded[1], items, top)
    named = [f"{spec} ({on})" for spec, on in sides]
    if as_json:
        print(json.dumps(asdict(report) | {"a": named[0], "b": named[1]}, allow_nan=True))
    else:
        _print_diff(named[0], named[1], report)
    if min_spearman is not None and not report.spearman_at_least(min_spearman):
        raise typer.Exit(EXIT_FAILED)


def _print_diff(a: str, b: str, report: object) -> None:
    from rerankq.worker.model_diff import DiffReport

    report = cast(DiffReport, report)
    console.print(f"A = {a}\nB = {b}\n{report.pairs} pairs in {report.items} golden items")
    console.print(f"Spearman rank correlation {report.spearman:.4f}, Kendall tau {report.kendall:.4f}")
    console.print(
        f"ranked right: A {report.right_a}/{report.items}, B {report.right_b}/{report.items}; "
        f"same order in {report.same_order}/{report.items} items, same best passage in {report.same_top}/{report.items}"
    )
    if report.close is not None:
        console.print(f"close candidates ({report.close.items} jobs of near-duplicates): {report.close.summary()}")
    table = Table("item", "passage", "A", "B", "change", title="largest score changes (normalised scores)")
    for change in report.largest_changes:
        kind = "relevant" if change.relevant else "irrelevant"
        passage = change.passage if len(change.passage) <= 48 else change.passage[:47] + "…"
        table.add_row(
            change.item_id,
            f"{kind}: {passage}",
            f"{change.score_a:.4f}",
            f"{change.score_b:.4f}",
            f"{change.delta:+.4f}",
        )
    console.print(table)


@models_app.command("list")
def list_models(as_json: Json = False, redis_url: RedisUrl = None) -> None:
    """The shipped manifests and those in RERANKQ_MODELS_DIR, the versions live workers serve, and the aliases."""
    settings = apply_settings(redis_url=redis_url)
    client = _redis(settings)
    manifests = load_manifests(settings.models_dir)
    workers = read_live(client, settings.presence_interval_s)
    aliases = static_aliases(settings) | stored_aliases(client)
    names = sorted({*manifests, *(worker.model for worker in workers)})
    rows = [_model_row(name, manifests.get(name), workers, aliases) for name in names]
    if as_json:
        print(json.dumps({"models": rows, "aliases": {alias: t.shares() for alias, t in aliases.items()}}))
        return
    table = Table("version", "source", "revision", "kind", "workers", "aliases", title="model versions")
    for row in rows:
        table.add_row(*(str(value) if value is not None else "" for value in row.values()))
    _print_table(table, names=("version",))
    _print_aliases(aliases)


def _model_row(
    name: str, manifest: ModelManifest | None, workers: list[WorkerPresence], aliases: dict[str, AliasTarget]
) -> dict[str, str | int | None]:
    return {
        "name": name,
        "source": manifest.source if manifest else None,
        "revision": manifest.revision if manifest else None,
        "kind": manifest.kind if manifest else None,
        "workers": sum(worker.model == name for worker in workers),
        "aliases": ", ".join(sorted(alias for alias, target in aliases.items() if name in target.targets)),
    }


@alias_app.command("set")
def alias_set(
    alias: Annotated[str, typer.Argument(help="The alias, e.g. default or zh.")],
    targets: Annotated[list[str], typer.Argument(help="VERSION (all traffic) or VERSION=WEIGHT ... (a split).")],
    note: Annotated[str, typer.Option(help="Why: kept with the value and its history.")] = "",
    force: Annotated[bool, typer.Option(help="Allow versions that no live worker serves yet.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Point ALIAS at one version, or split its traffic by weight (gray release). Producers pick the
    change up within RERANKQ_ALIAS_REFRESH_S; the earlier value is kept for `alias rollback`."""
    settings = apply_settings(redis_url=redis_url)
    client = _redis(settings)
    try:
        split = parse_split(targets)
        _check_targets(client, settings, alias, split, force)
        value = set_alias(client, alias, split, note)
    except InvalidRequest as e:
        console.print(f"[red]✗[/] {e}")
        raise typer.Exit(EXIT_USAGE) from e
    console.print(f"{alias} → {value.describe()}")


@alias_app.command("rollback")
def alias_rollback(
    alias: Annotated[str, typer.Argument(help="The alias to put back.")], redis_url: RedisUrl = None
) -> None:
    """Restore the alias's value before its last change (repeat to go further back)."""
    try:
        restored = rollback_alias(_redis(apply_settings(redis_url=redis_url)), alias)
    except LookupError as e:
        console.print(f"[red]✗[/] {e}")
        raise typer.Exit(EXIT_USAGE) from e
    console.print(f"{alias} → {restored.describe()}" if restored else f"{alias} removed (it did not exist before)")


@alias_app.command("delete")
def alias_delete(
    alias: Annotated[str, typer.Argument(help="The alias to remove (a rollback restores it).")],
    redis_url: RedisUrl = None,
) -> None:
    """Remove a live alias; a static one from RERANKQ_MODEL_ALIASES (if any) shows through again."""
    if not delete_alias(_redis(apply_settings(redis_url=redis_url)), alias):
        console.print(f"[red]✗[/] no live alias {alias!r}")
        raise typer.Exit(EXIT_USAGE)
    console.print(f"{alias} removed")


@alias_app.command("show")
def alias_show(
    alias: Annotated[str | None, typer.Argument(help="One alias and its history; none: every alias.")] = None,
    as_json: Json = False,
    redis_url: RedisUrl = None,
) -> None:
    """The live aliases (and static ones), or one alias with its earlier values, newest first."""
    settings = apply_settings(redis_url=redis_url)
    client = _redis(settings)
    aliases = static_aliases(settings) | stored_aliases(client)
    if alias is None:
        if as_json:
            print(json.dumps({name: target.model_dump() for name, target in aliases.items()}))
        else:
            _print_aliases(aliases)
        return
    history = alias_history(client, alias)
    current = aliases.get(alias)
    if as_json:
        dumped = [value.model_dump() if value else None for value in history]
        print(json.dumps({"alias": alias, "current": current.model_dump() if current else None, "history": dumped}))
        return
    console.print(f"{alias} → {current.describe() if current else '(not set)'}")
    for steps_back, value in enumerate(history, 1):
        console.print(f"  {steps_back} back: {value.describe() if value else '(not set)'}{_note(value)}")


def _print_aliases(aliases: dict[str, AliasTarget]) -> None:
    if not aliases:
        console.print(NO_ALIASES)
        return
    table = Table("alias", "routes to", "set at", "note", title="aliases")
    for name, target in sorted(aliases.items()):
        set_at = f"{target.set_at:.0f}" if target.set_at else "static"
        table.add_row(name, target.describe(), set_at, target.note)
    _print_table(table, names=("alias",))


def _print_table(table: Table, names: Collection[str]) -> None:
    """Print a table whose columns headed ``names`` hold one model version (or alias) a cell, which
    is never cut: several versions share a long prefix (``bge-reranker-v2-…``), so a cut name is a
    wrong name. Piped, every cell is whole. On a narrow terminal a names column keeps one line at
    its longest name's width, and the other columns fold (break, at spaces first), never vanish."""
    for column in table.columns:
        if column.header in names:
            column.no_wrap, column.min_width = True, max((cell_len(str(cell)) for cell in column.cells), default=1)
        else:
            column.overflow = "fold"
    shown_on = console if console.is_terminal else Console(file=console.file, width=PIPED_WIDTH, highlight=False)
    shown_on.print(table)


def _note(value: AliasTarget | None) -> str:
    return f"  ({value.note})" if value and value.note else ""


def _check_targets(client: redis.Redis, settings: Settings, alias: str, split: dict[str, int], force: bool) -> None:
    """An alias must not hide a version's own name or point at another alias; its versions need a
    live worker, or the jobs routed there would wait (``--force`` for a version about to start)."""
    workers = read_live(client, settings.presence_interval_s)
    versions = set(load_manifests(settings.models_dir)) | {worker.model for worker in workers}
    if alias in versions:
        raise InvalidRequest("alias", "must not be the name of a model version", f"{alias!r} is one")
    aliases = static_aliases(settings) | stored_aliases(client)
    if nested := sorted(name for name in split if name in aliases):
        raise InvalidRequest("targets", "must be model versions, not aliases", f"{', '.join(nested)} are aliases")
    idle = sorted(name for name in split if not serving(workers, name, "interactive"))
    if idle and not force:
        raise InvalidRequest(
            "targets",
            "every version needs a live worker (start one first, or pass --force)",
            f"none serves {', '.join(idle)}",
        )


def _redis(settings: Settings) -> redis.Redis:
    return connect(settings.redis_url, settings.redis_sentinel_master, socket_timeout=5)
