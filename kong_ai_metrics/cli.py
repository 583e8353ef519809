"""Command line: ``kong-ai-metrics`` serves the plugin, ``kong-ai-metrics replay`` replays captures.

Kong runs the query command (``-dump``) and the start command itself, so the server's
flags follow kong-pdk's dedicated server (``-p``, ``--socket-name``, ``-dump``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from . import __version__, plugin
from .labels import DEFAULT_MAX_MODELS
from .metrics import DEFAULT_PREFIX
from .pdk_events import DEFAULT_EVENT_TIMEOUT
from .server import BUILTIN_DISPATCHER, DISPATCHERS
from .sidecar import DEFAULT_LISTEN, SidecarSecurity, parse_basic_auth, parse_listen

LISTEN_ENV = "KONG_AI_METRICS_LISTEN"
PREFIX_ENV = "KONG_AI_METRICS_PREFIX"
MAX_MODELS_ENV = "KONG_AI_METRICS_MAX_MODELS"
EVENT_TIMEOUT_ENV = "KONG_AI_METRICS_EVENT_TIMEOUT"
DEBUG_GAUGES_ENV = "KONG_AI_METRICS_DEBUG_GAUGES"
BASIC_AUTH_ENV = "KONG_AI_METRICS_BASIC_AUTH"
BEARER_TOKEN_ENV = "KONG_AI_METRICS_BEARER_TOKEN"
BASIC_AUTH_FILE_ENV = "KONG_AI_METRICS_BASIC_AUTH_FILE"
BEARER_TOKEN_FILE_ENV = "KONG_AI_METRICS_BEARER_TOKEN_FILE"
TLS_CERT_ENV = "KONG_AI_METRICS_TLS_CERT"
TLS_KEY_ENV = "KONG_AI_METRICS_TLS_KEY"
DISPATCHER_ENV = "KONG_AI_METRICS_DISPATCHER"

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "replay":
        from .replay import run_replay

        return run_replay(_replay_parser().parse_args(args[1:]))
    return _serve(_server_parser().parse_args(args))


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address of the /metrics and /healthz server (environment {LISTEN_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--metric-prefix",
        default=os.environ.get(PREFIX_ENV, DEFAULT_PREFIX),
        metavar="PREFIX",
        help=f"prefix of every metric name; empty for the names on Kong's docs page (environment {PREFIX_ENV}; default %(default)s)",
    )


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kong-ai-metrics",
        description=(
            "Kong external plugin server for the ai-metrics plugin. "
            "Run 'kong-ai-metrics replay --help' to replay captured LLM traffic."
        ),
    )
    parser.add_argument(
        "-p",
        "--kong-prefix",
        "-kong-prefix",
        dest="prefix",
        default="/usr/local/kong/",
        help="Kong prefix directory; the socket is created in it (default %(default)s)",
    )
    parser.add_argument(
        "--socket-name",
        default=f"{plugin.NAME}.socket",
        help="socket file name inside the prefix; Kong's default for this plugin server is %(default)s",
    )
    parser.add_argument("-dump", "--dump", action="store_true", help="print the plugin info for Kong's query command and exit")
    parser.add_argument("--listen-queue-size", type=int, default=4096, help="backlog of the Unix socket (default %(default)s)")
    parser.add_argument(
        "--dispatcher",
        choices=DISPATCHERS,
        default=os.environ.get(DISPATCHER_ENV, BUILTIN_DISPATCHER),
        help=(
            "RPC dispatcher: the built-in one, or kong-pdk's own server in gevent mode as a fallback "
            f"(environment {DISPATCHER_ENV}; default %(default)s)"
        ),
    )
    verbosity = parser.add_mutually_exclusive_group()
    # The server logs at info by default, so one -v already gives debug output.
    verbosity.add_argument("-v", "--verbose", action="count", default=1, help="log debug detail (default: info)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    parser.add_argument(
        "--no-exit-with-parent",
        dest="exit_with_parent",
        action="store_false",
        help=(
            "keep serving when the process that started the server exits; by default the server "
            "stops with Kong's worker that started it, so it never outlives Kong"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_metrics_options(parser)
    _add_limit_options(parser)
    _add_sidecar_security_options(parser)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _naming_env(convert: Callable[[str], T], env: str) -> Callable[[str], T]:
    """Wrap an argparse ``type`` so that an invalid value taken from ``env`` names that variable."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as exc:
            if os.environ.get(env) == text:
                raise argparse.ArgumentTypeError(f"{exc} (from {env})") from None
            raise

    return parse


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    # String defaults go through `type` too, so an invalid environment value is
    # reported like an invalid flag, with the variable named.
    parser.add_argument(
        "--max-models",
        type=_naming_env(_positive_int, MAX_MODELS_ENV),
        default=os.environ.get(MAX_MODELS_ENV, str(DEFAULT_MAX_MODELS)),
        metavar="N",
        help=(
            "maximum number of distinct ai_model label values in this process; exchanges of further models "
            f'are recorded as ai_model="other" (environment {MAX_MODELS_ENV}; default %(default)s)'
        ),
    )
    parser.add_argument(
        "--event-timeout",
        type=_naming_env(_positive_seconds, EVENT_TIMEOUT_ENV),
        default=os.environ.get(EVENT_TIMEOUT_ENV, f"{DEFAULT_EVENT_TIMEOUT:g}"),
        metavar="SECONDS",
        help=(
            "seconds an event may wait for Kong's next call before the server ends it as abandoned, "
            f"as Kong does after a Lua error (environment {EVENT_TIMEOUT_ENV}; default %(default)s)"
        ),
    )
    parser.add_argument(
        "--debug-gauges",
        action="store_true",
        default=os.environ.get(DEBUG_GAUGES_ENV, "").lower() in ("1", "true", "yes"),
        help=f"export a gauge of live greenlets; each scrape walks the heap, so leave it off in production (environment {DEBUG_GAUGES_ENV}=1)",
    )


def _add_sidecar_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-basic-auth",
        default=os.environ.get(BASIC_AUTH_ENV),
        metavar="USER:PASSWORD",
        help=(
            f"require HTTP basic auth on /metrics (environment {BASIC_AUTH_ENV}; prefer it, "
            "because other users of the host can read command lines)"
        ),
    )
    parser.add_argument(
        "--metrics-bearer-token",
        default=os.environ.get(BEARER_TOKEN_ENV),
        metavar="TOKEN",
        help=f"require 'Authorization: Bearer TOKEN' on /metrics (environment {BEARER_TOKEN_ENV}; prefer it, as above)",
    )
    parser.add_argument(
        "--metrics-basic-auth-file",
        default=os.environ.get(BASIC_AUTH_FILE_ENV),
        metavar="PATH",
        help=f"read USER:PASSWORD for --metrics-basic-auth from this file (environment {BASIC_AUTH_FILE_ENV})",
    )
    parser.add_argument(
        "--metrics-bearer-token-file",
        default=os.environ.get(BEARER_TOKEN_FILE_ENV),
        metavar="PATH",
        help=f"read the token for --metrics-bearer-token from this file (environment {BEARER_TOKEN_FILE_ENV})",
    )
    parser.add_argument(
        "--metrics-tls-cert",
        default=os.environ.get(TLS_CERT_ENV),
        metavar="PATH",
        help=f"PEM certificate chain; with --metrics-tls-key, the sidecar serves HTTPS (environment {TLS_CERT_ENV})",
    )
    parser.add_argument(
        "--metrics-tls-key",
        default=os.environ.get(TLS_KEY_ENV),
        metavar="PATH",
        help=f"PEM private key of --metrics-tls-cert (environment {TLS_KEY_ENV})",
    )


def _sidecar_security(args: argparse.Namespace) -> SidecarSecurity:
    """Build the sidecar's security settings; raise ValueError naming the invalid option."""
    basic_text = _secret(args.metrics_basic_auth, args.metrics_basic_auth_file, "--metrics-basic-auth")
    basic_auth = parse_basic_auth(basic_text) if basic_text else None
    bearer_token = _secret(args.metrics_bearer_token, args.metrics_bearer_token_file, "--metrics-bearer-token")
    if bool(args.metrics_tls_cert) != bool(args.metrics_tls_key):
        raise ValueError("--metrics-tls-cert and --metrics-tls-key must be given together")
    return SidecarSecurity(
        basic_auth=basic_auth,
        bearer_token=bearer_token,
        tls_cert=args.metrics_tls_cert or None,
        tls_key=args.metrics_tls_key or None,
    )


def _secret(value: str | None, path: str | None, option: str) -> str | None:
    """Return the secret given directly or read from the file at ``path``.

    Raises ValueError when both are given, or when the file cannot be read or is empty.
    """
    if value and path:
        raise ValueError(f"give {option} or {option}-file, not both")
    if not path:
        return value or None
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {option}-file {path}: {exc}") from exc
    if not secret:
        raise ValueError(f"{option}-file {path} is empty")
    return secret


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kong-ai-metrics replay",
        description=(
            "Replay captured LLM exchanges (HAR files) through a real ai-metrics plugin server, "
            "driven as Kong drives it, and print what was measured."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE.har", help="HAR files exported by a browser, Insomnia or mitmproxy")
    parser.add_argument("--config", metavar="FILE", help="plugin config as JSON or YAML (the plugin's 'config' object)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep /metrics up on --metrics-listen after the replay until interrupted; without it, a free loopback port is used",
    )
    parser.add_argument("--print-metrics", action="store_true", help="print the whole /metrics exposition after the tables")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging; repeat for debug output")
    _add_metrics_options(parser)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .server import ServerOptions, configure_logging, dump_json, serve

    if args.dump:
        # Kong parses all of stdout as JSON, so nothing else may be printed.
        sys.stdout.write(dump_json())
        sys.stdout.flush()
        return 0

    configure_logging(0 if args.quiet else args.verbose)
    try:
        host, port = parse_listen(args.metrics_listen)
    except ValueError as exc:
        source = f" (from {LISTEN_ENV})" if os.environ.get(LISTEN_ENV) == args.metrics_listen else ""
        print(f"kong-ai-metrics: --metrics-listen{source}: {exc}", file=sys.stderr)
        return 2
    try:
        security = _sidecar_security(args)
    except ValueError as exc:
        print(f"kong-ai-metrics: {exc}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.prefix):
        print(f"kong-ai-metrics: Kong prefix {args.prefix} is not a directory; pass the prefix with -p", file=sys.stderr)
        return 2
    options = ServerOptions(
        socket_path=os.path.join(args.prefix, args.socket_name),
        metrics_host=host,
        metrics_port=port,
        metric_prefix=args.metric_prefix,
        listen_queue_size=args.listen_queue_size,
        max_models=args.max_models,
        event_timeout=args.event_timeout,
        debug_gauges=args.debug_gauges,
        sidecar_security=security,
        dispatcher=args.dispatcher,
        exit_with_parent=args.exit_with_parent,
    )
    return serve(options)
