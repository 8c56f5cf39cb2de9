"""What every ``rerankq`` command shares: exit codes, options named the same everywhere, the
settings built from those options, and one line (never a traceback) for every expected failure.

Exit codes, the same in every command:

==  =====================================================================================
0   done
1   done, but something failed: a model check, records of a bulk run, a diff below its gate
2   cannot start as asked: a bad option or setting, an unknown model, a broken model folder,
    a Celery, kombu or redis-py outside the versions rerankq supports
3   a service is unreachable: Redis, or the Hugging Face hub for weights not in the cache
130 interrupted (Ctrl-C, SIGTERM); a bulk run resumes where it stopped
==  =====================================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, cast, get_args, get_origin

import kombu.exceptions
import redis
import typer
from annotated_types import Ge, Le
from pydantic import ValidationError

from rerankq.core.redis_clients import broker_unavailable
from rerankq.core.registry import MODEL_KINDS
from rerankq.core.settings import Settings, get_settings, use_settings
from rerankq.errors import (
    BrokerUnavailable,
    HubUnreachable,
    IncompatibleFormat,
    InvalidRequest,
    ModelLoadError,
    UnknownModel,
    UnsupportedLibraries,
    error_message,
    field_path,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
CommandFunction = TypeVar("CommandFunction", bound=Callable[..., Any])


def one_of(choices: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """An option callback that refuses a value outside ``choices`` (an unset option passes)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def setting_option(field: str, *flags: str) -> Any:
    """The option that sets one setting, its rules taken from ``Settings.model_fields`` (the one home
    of each: TEI declares flag, variable and doc once the same way): help from the description, the
    bounds from ``ge``/``le``, the choices of a ``Literal``. Its default is None: an option left out
    keeps the environment's value (``apply_settings``). Other bounds (``gt``, ``lt``) are checked
    when ``apply_settings`` builds the settings, in one line all the same."""
    info = Settings.model_fields[field]
    low = next((cast(float, rule.ge) for rule in info.metadata if isinstance(rule, Ge)), None)
    high = next((cast(float, rule.le) for rule in info.metadata if isinstance(rule, Le)), None)
    choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
    default = "unset" if info.default is None else info.default
    described = f"{(info.description or '').replace('`', '')} (default: RERANKQ_{field.upper()}, else {default})"
    return typer.Option(*flags, help=described, callback=one_of(choices) if choices else None, min=low, max=high)


RedisUrl = Annotated[str | None, setting_option("redis_url", "--redis-url")]
BrokerUrl = Annotated[str | None, setting_option("broker_url", "--broker-url")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
ModelName = Annotated[str | None, typer.Option("--model", help="Registry name, Hugging Face id or local folder.")]
Kind = Annotated[
    str | None,
    typer.Option(
        callback=one_of(MODEL_KINDS),
        help=f"What a folder or Hugging Face id holds: {', '.join(MODEL_KINDS)} (default cross-encoder); a "
        "registry name's manifest says it.",
    ),
]
BackendOption = Annotated[str | None, setting_option("backend", "--backend")]
MaxLength = Annotated[int | None, setting_option("max_length", "--max-length")]
CheckRanking = Annotated[bool | None, setting_option("check_ranking", "--check-ranking/--no-check-ranking")]


def apply_settings(**flags: Any) -> Settings:
    """This process's settings: the environment's, with the flags that were given on top (a flag
    left out keeps the environment's value). Child processes (workers a command starts) inherit
    the Redis URL through the environment."""
    given = {name: value for name, value in flags.items() if value is not None}
    settings = get_settings().updated(**given) if given else get_settings()
    use_settings(settings)
    return settings


def failure_of(error: BaseException) -> tuple[str, int] | None:
    """The one line and exit code of an expected failure; None: a bug (its traceback is shown)."""
    if isinstance(error, redis.RedisError | kombu.exceptions.OperationalError):
        error = broker_unavailable(error, "talking to it", get_settings().redis_url)
    if isinstance(error, BrokerUnavailable | HubUnreachable):
        return str(error), EXIT_UNAVAILABLE
    if isinstance(error, ValidationError):
        return _settings_error(error), EXIT_USAGE
    if isinstance(error, UnknownModel):
        return f"{error}; `rerankq models list` shows them with their workers", EXIT_USAGE
    if isinstance(error, InvalidRequest | ModelLoadError | IncompatibleFormat | UnsupportedLibraries):
        return " ".join(str(error).split("\n  ")), EXIT_USAGE  # a check's "fix:" line joins its message
    return None


def _settings_error(error: ValidationError) -> str:
    first = error.errors()[0]
    name, message = field_path(first["loc"]), error_message(first)
    setting = f"RERANKQ_{name.upper()}"
    return message if setting in message else f"{setting} (or --{name.replace('_', '-')}): {message}"


class App(typer.Typer):
    """A Typer app whose every command answers an expected failure with one line on stderr and its
    exit code (``failure_of``), run from the console script or from a test's CliRunner alike.
    ``path`` is how messages name its commands (``rerankq models``)."""

    def __init__(self, *args: Any, path: str = "rerankq", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = path

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunction], CommandFunction]:
        register = super().command(*args, **kwargs)

        def decorator(function: CommandFunction) -> CommandFunction:
            name = kwargs.get("name") or (args[0] if args else function.__name__.replace("_", "-"))
            register(one_line_failures(function, f"{self.path} {name}"))
            return function

        return decorator


def one_line_failures(function: CommandFunction, command: str) -> CommandFunction:
    @functools.wraps(function)  # Typer reads the options from the wrapped signature
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as e:
            failure = failure_of(e)
            if failure is None:
                raise
            message, code = failure
            typer.echo(f"{command}: {message}", err=True)
            raise typer.Exit(code) from e

    return cast(CommandFunction, wrapper)
