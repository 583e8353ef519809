"""kong-pdk 0.36's own dedicated server, unchanged, running the ai-metrics or the no-op plugin.

This is the baseline of the protocol benchmarks: ``kong_pdk.cli.start_dedicated_server``
as a plugin author would call it, with kong-pdk's flags after the plugin name, such as
``python -m benchmarks.stock_server ai-metrics -p PREFIX --socket-name S -g --no-lua-style``.
"""

from __future__ import annotations

import sys

from kong_pdk.cli import start_dedicated_server


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("ai-metrics", "noop"):
        print("usage: python -m benchmarks.stock_server {ai-metrics,noop} KONG_PDK_FLAGS...", file=sys.stderr)
        sys.exit(2)
    which = sys.argv.pop(1)
    if which == "noop":
        from benchmarks import noop_plugin as module
    else:
        from kong_ai_metrics import plugin as module  # type: ignore[no-redef]
    start_dedicated_server(module.NAME, module.Plugin, module.version, module.priority, module.Schema)


if __name__ == "__main__":
    main()
