"""Command line: ``kong-ai-metrics`` serves the plugin, ``kong-ai-metrics replay`` replays captures.

Kong runs the query command (``-dump``) and the start command itself, so the server's
flags follow kong-pdk's dedicated server (``-p``, ``--socket-name``, ``-dump``).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, plugin
from .metrics import DEFAULT_PREFIX
from .sidecar import DEFAULT_LISTEN, parse_listen

LISTEN_ENV = "KONG_AI_METRICS_LISTEN"
PREFIX_ENV = "KONG_AI_METRICS_PREFIX"


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
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging; repeat for debug output")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_metrics_options(parser)
    return parser


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
    parser.add_argument("--serve", action="store_true", help="keep /metrics up after the replay until interrupted")
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
    )
    return serve(options)
