"""The one command-line shape every job shares: ``--config FILE [--set a.b=c ...] [--print-config]``.

A job module defines its config dataclass and a ``run(cfg)`` function, and ends with
``raise SystemExit(job_main(Config, run, default_config=...))``. Errors a user can fix
(a :class:`~pipeline.core.errors.TubeletError`, including config errors) print one line on stderr
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from pipeline.core.config import ConfigError, describe, load_config, to_toml
from pipeline.core.errors import TubeletError

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | None, default: str | None) -> Path | None:
    """A config path as given, or relative to ``jobs/configs/`` (``pretrain/demo`` works too)."""
    chosen = path or default
    if chosen is None:
        return None
    p = Path(chosen)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / chosen, CONFIG_DIR / f"{chosen}.toml"):
        if candidate.is_file():
            return candidate
    available = sorted(str(c.relative_to(CONFIG_DIR)) for c in CONFIG_DIR.rglob("*.toml"))
    raise ConfigError(f"config not found: {chosen} (available: {', '.join(available)})")


def parse_args(cls: type[T], argv: Sequence[str] | None, prog: str, default_config: str | None = None) -> tuple[T, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    parser.add_argument("--config", help=f"TOML config (default: {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value; repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every config key with its type and help")
    parser.add_argument("--json", action="store_true", help="machine-readable output where the job supports it")
    args = parser.parse_args(argv)
    if args.list_keys:
        for key, tp, default, text in describe(cls):
            print(_key_line(key, tp, default, text))
        raise SystemExit(0)
    cfg = load_config(cls, resolve_config_path(args.config, default_config), args.overrides)
    return cfg, args


def rounded(metrics: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """Floats to ``digits`` significant digits for printing (an lr of 3.1e-06 stays 3.1e-06, not 0.0)."""
    return {k: float(f"{v:.{digits}g}") if isinstance(v, float) else v for k, v in metrics.items()}


def _key_line(key: str, tp: str, default: Any, text: str) -> str:
    return f"{key:40s} {tp:28s} {default!r:>20}  {text}"


class _Required:
    def __repr__(self) -> str:
        return "required"


_REQUIRED = _Required()


class ListOptions(argparse.Action):
    """``--list-keys`` of a job without a config file (``jobs.predict``, ``jobs.submit``): its
    options, one line each in the shape of a config job's keys, then exit 0 (like ``--help``,
    before required arguments are checked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help=kwargs.get("help", "list every option with its type, default and help"))

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        for action in parser._actions:  # argparse keeps no public list of a parser's arguments
            if isinstance(action, (argparse._HelpAction, ListOptions)):
                continue
            key = max(action.option_strings, key=len) if action.option_strings else action.dest
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                tp = "flag"
            elif action.choices is not None:
                tp = "|".join(map(str, action.choices))
            else:
                tp = getattr(action.type, "__name__", "str")
            if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
                tp = f"list[{tp}]"
            default = _REQUIRED if action.required else action.default
            print(_key_line(key, tp, default, action.help or ""))
        parser.exit(0)


def job_main(cls: type[T], run: Callable[..., Any], argv: Sequence[str] | None = None,
             prog: str = "tubelet", default_config: str | None = None) -> int:
    """Parse, run, and turn user-fixable errors into one line on stderr (exit 2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("aiobotocore", "botocore", "s3fs", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg, args = parse_args(cls, argv, prog, default_config)
        if args.print_config:
            print(to_toml(cfg), end="")
            return 0
        result = run(cfg, json_output=args.json) if _accepts_json(run) else run(cfg)
    except TubeletError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


def _accepts_json(fn: Callable[..., Any]) -> bool:
    import inspect

    return "json_output" in inspect.signature(fn).parameters
