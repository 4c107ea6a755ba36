"""Typer commands built from config dataclasses: each flag is declared once, as a field.

``config_command(app, Cls)`` registers a command with one option per field of ``Cls`` (any dataclass):

- the name ``--field-name`` (a bool: an on-only flag), or the field metadata's ``flags``;
- the type from the annotation: str, int, float, bool, ``list[str]`` (a repeatable option) and ``X | None``;
  a field whose default is None is optional on the command line whatever its annotation says;
- the default from the field (a ``default_factory`` list: empty when the option is not given; a field
  without a default: a required option);
- the help from the metadata's ``help``, escaped for rich markup (typer renders help as markup);
- metadata ``argument=True``: a positional argument instead, required when its default is None (unless
  ``required=False``);
  ``panel``: its rich help panel; ``path``: shown and parsed as a path, handed on as a str.

``prefkit.config.field(default, help, flags=..., argument=..., panel=..., path=...)`` writes that metadata.
Every command also gets ``--config FILE`` (YAML/JSON, the fields' keys): defaults < file < flags given on
the command line (``merge_config``). The command's body receives the field values and the file; see
``config_command``. Nothing here imports torch: it runs when ``prefkit --help`` does.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

CONFIG_HELP = "YAML/JSON file with the same keys as these flags; flags win."

# the keys of a field's metadata this module reads (prefkit.config.field writes them)
METADATA_KEYS = ("help", "flags", "argument", "panel", "path", "aliases", "required")


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` / ``Optional[X]``, else ``(hint, False)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{hint}: only X | None unions become options")
        return args[0], True
    return hint, False


@dataclasses.dataclass(frozen=True)
class FieldParam:
    """How one field appears on the command line, and how its value goes back into the config."""

    name: str
    parameter: inspect.Parameter
    is_argument: bool
    factory: Callable[[], Any] | None  # default_factory: the value when the option is not given
    path: bool
    # hidden options of the old spellings (metadata "aliases"), as (parameter name, spelling)
    aliases: tuple[tuple[str, str], ...] = ()
    flag: str = ""  # the option's current spelling, e.g. --samples-per-prompt

    def to_config(self, value: Any) -> Any:
        if self.factory is not None:
            return self.factory() if value is None else list(value)
        if self.path and value is not None:
            return str(value)
        return value


def field_params(cls, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[FieldParam]:
    """One typer parameter per field of the dataclass ``cls``, in field order. ``overrides`` adds or
    replaces metadata keys per field name (for a class whose fields cannot carry them yet)."""
    from rich.markup import escape

    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        extra_meta = overrides.pop(f.name, {})
        if set(extra_meta) - set(METADATA_KEYS):
            raise TypeError(
                f"{cls.__name__}.{f.name}: unknown override {sorted(set(extra_meta) - set(METADATA_KEYS))}"
            )
        meta = {**f.metadata, **extra_meta}
        kind, optional = _strip_optional(hints[f.name])
        factory, required = None, False
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            factory, default = f.default_factory, None
        else:
            default, required = None, True  # a field without a default is required on the command line
        is_list = typing.get_origin(kind) is list
        if kind not in (str, int, float, bool) and not (is_list and typing.get_args(kind) == (str,)):
            raise TypeError(f"{cls.__name__}.{f.name}: {hints[f.name]} cannot be an option")
        if is_list and factory is None:
            raise TypeError(f"{cls.__name__}.{f.name}: a list option needs default_factory=list")
        path = bool(meta.get("path"))
        if path:
            if kind is not str:
                raise TypeError(f"{cls.__name__}.{f.name}: path=True needs a str field")
            kind = Path
        help_text = escape(meta.get("help", ""))
        panel = meta.get("panel")
        is_argument = bool(meta.get("argument"))
        if is_argument:
            required = required or (default is None and meta.get("required", True))
            info = typer.Argument(
                help=help_text, rich_help_panel=panel, show_default=not required, metavar=f.name.upper()
            )
        else:
            names = tuple(meta.get("flags") or ("--" + f.name.replace("_", "-"),))
            info = typer.Option(
                *names,
                help=help_text,
                rich_help_panel=panel,
                show_default=default is not None,
                # a switch takes no value: no "<bool>" hint that invites `--flag true`
                **({"metavar": ""} if kind is bool and not names[0].count("/") else {}),
            )
        if required:
            annotation, parameter_default = kind, inspect.Parameter.empty
        else:
            annotation = kind | None if (optional or default is None) else kind
            parameter_default = default
        parameter = inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=parameter_default,
            annotation=Annotated[annotation, info],
        )
        aliases = tuple((f"_alias_{f.name}_{i}", a) for i, a in enumerate(meta.get("aliases") or ()))
        flag = "" if is_argument else names[0].split("/")[0]
        out.append(FieldParam(f.name, parameter, is_argument, factory, path, aliases, flag))
    if overrides:
        raise TypeError(f"{cls.__name__}: overrides name no field: {sorted(overrides)}")
    return out


def merge_config(
    ctx: typer.Context, cls, config_file: Path | None, values: dict, aliased: frozenset[str] = frozenset()
):
    """Defaults < --config file < flags given on the command line (``aliased``: fields given by an old
    spelling, which count as given on the command line)."""
    from prefkit.config import load_config_file

    merged = dict(values)
    if config_file is not None:
        from_file = load_config_file(config_file, cls)
        for key, value in from_file.items():
            # typer vendors its own click: compare the source by name, not by enum class
            source = ctx.get_parameter_source(key)
            if getattr(source, "name", None) != "COMMANDLINE" and key not in aliased:
                merged[key] = value
    return cls(**merged)


@dataclasses.dataclass
class Invocation:
    """One run of a built command: what its body receives."""

    ctx: typer.Context
    cls: type
    values: dict[str, Any]  # every field: its value on the command line, else its default
    config_file: Path | None  # --config FILE, or None
    extra: dict[str, Any]  # the values of the command's extra parameters, by name

    aliased: frozenset[str] = frozenset()  # fields given by an old spelling (a hidden alias)

    def resolve(self):
        """The config: defaults < --config file < flags given on the command line."""
        return merge_config(self.ctx, self.cls, self.config_file, self.values, self.aliased)

    def given(self) -> frozenset[str]:
        """The settings the user gave: on the command line or in the --config file (not defaulted)."""
        names = {
            k for k in self.values if getattr(self.ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"
        } | self.aliased
        if self.config_file is not None:
            from prefkit.config import load_config_file

            names |= set(load_config_file(self.config_file, self.cls))
        return frozenset(names)


def config_command(
    app: typer.Typer,
    cls,
    *,
    name: str | None = None,
    extra: Sequence[inspect.Parameter] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    config_file: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``body`` as the command ``name`` (default: the body's name; help: its docstring)
    with one parameter per field of ``cls`` and ``--config FILE``, and call it with an ``Invocation``:
    the field values given (or defaulted), the ``--config`` path; ``Invocation.resolve()`` makes the config.

    ``extra``: more typer parameters (``inspect.Parameter`` annotated ``Annotated[type,
    typer.Argument/Option(...)]``), placed after the config's positional arguments; their values are in
    ``Invocation.extra``. ``overrides``: metadata per field name, on top of the field's own.
    ``config_file=False``: no ``--config`` option.
    """
    fields = field_params(cls, overrides)
    reserved = {"ctx"} | ({"config"} if config_file else set()) | {p.name for p in extra}
    clash = reserved & {p.name for p in fields}
    if clash:
        raise TypeError(f"{cls.__name__}: field(s) {sorted(clash)} clash with the command's own parameters")
    # positional arguments in field order, then the extra parameters, then the options in field order
    arguments = [p.parameter for p in fields if p.is_argument]
    options = [p.parameter for p in fields if not p.is_argument]
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    params += arguments + list(extra) + options
    for p in fields:  # the old spellings: hidden, same type, no default
        kind = typing.get_args(p.parameter.annotation)[0]
        for param_name, spelling in p.aliases:
            hidden = typer.Option(spelling, hidden=True)
            kind_opt = kind if kind is bool else kind | None
            params.append(
                inspect.Parameter(
                    param_name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None if kind is not bool else False,
                    annotation=Annotated[kind_opt, hidden],
                )
            )
    if config_file:
        option = typer.Option("--config", help=CONFIG_HELP)
        params.append(
            inspect.Parameter(
                "config",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[Path | None, option],
            )
        )
    by_name = {p.name: p for p in fields}
    extra_names = [p.name for p in extra]

    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        def command(**kwargs: Any) -> Any:
            ctx = kwargs.pop("ctx")
            config = kwargs.pop("config", None)
            extras = {k: kwargs.pop(k) for k in extra_names}
            aliased = set()
            for p in fields:
                for param_name, spelling in p.aliases:
                    value = kwargs.pop(param_name)
                    if value is None or value is False:
                        continue
                    if getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE":
                        raise typer.BadParameter(
                            f"{spelling} is an old spelling of {p.flag}: give one of them"
                        )
                    kwargs[p.name] = value
                    aliased.add(p.name)
                    _note_alias(spelling, p.flag)
            values = {k: by_name[k].to_config(v) for k, v in kwargs.items()}
            return body(Invocation(ctx, cls, values, config, extras, frozenset(aliased)))

        command.__name__ = command.__qualname__ = body.__name__
        command.__doc__ = body.__doc__
        command.__module__ = body.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.config_class = cls  # type: ignore[attr-defined]
        app.command(name or body.__name__)(command)
        return command

    return register


def _note_alias(spelling: str, flag: str) -> None:
    import sys

    print(
        f"prefkit: note: {spelling} is read as {flag} (another spelling of it, accepted for now)",
        file=sys.stderr,
    )
