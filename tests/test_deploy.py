"""Deployment files: Dockerfile, kong.conf.sample, docker-compose.yml and deploy/ agree with each other and with the CLI.

Neither Docker nor Kong runs here, so the files are parsed and checked against the
code they configure. The CLI parses the start and query commands, and the plugin's
schema (from the real query command) validates the declarative config. The real plugin
server is started with the settings the files give it. The compose file is read with
PyYAML: the machine has no ``docker compose`` plugin to run ``docker compose config``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kong_ai_metrics import cli
from kong_ai_metrics.config import DEFAULT_MAX_BODY_SIZE, PluginConfig
from kong_ai_metrics.kong_emulator import query_plugin_info
from kong_ai_metrics.kong_schema import validate_config
from kong_ai_metrics.replay import _free_port
from kong_ai_metrics.sidecar import parse_listen

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
KONG_CONF_SAMPLE = ROOT / "kong.conf.sample"
COMPOSE_FILE = ROOT / "docker-compose.yml"
KONG_DECLARATIVE = ROOT / "deploy" / "kong.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"

sys.path.insert(0, str(ROOT / "deploy"))
import traffic  # noqa: E402 - deploy/ is not a package; its scripts run in plain containers

VIRTUALENV = "/opt/kong-ai-metrics"
CLI_NAME = "kong-ai-metrics"


# ---------------------------------------------------------------------------------
# Parsing the files


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def kong_conf_sample() -> dict[str, str]:
    """Parse kong.conf lines as Kong does: ``key = value``, ``#`` starts a comment."""
    settings = {}
    for line in KONG_CONF_SAMPLE.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        key, separator, value = text.partition("=")
        assert separator, f"kong.conf.sample: not a key = value line: {line!r}"
        settings[key.strip()] = value.strip()
    return settings


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def volumes(service: dict[str, Any]) -> dict[str, Path]:
    """Map each container path of a service's bind mounts to the host path, relative to the compose file."""
    mounts = {}
    for entry in service.get("volumes", []):
        host, container = entry.split(":")[:2]
        mounts[container] = (COMPOSE_FILE.parent / host).resolve()
    return mounts


def nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def plugin_server_settings(settings: dict[str, str]) -> dict[str, str]:
    """Return the socket, start and query settings of the one declared plugin server."""
    (name,) = settings["pluginserver_names"].split(",")
    key = "pluginserver_" + name.strip().replace("-", "_") + "_"
    return {"socket": settings[key + "socket"], "start_cmd": settings[key + "start_cmd"], "query_cmd": settings[key + "query_cmd"]}


def docker_env_as_conf() -> dict[str, str]:
    """Return the Dockerfile's KONG_* settings as kong.conf keys (Kong maps KONG_FOO_BAR to foo_bar)."""
    return {name[len("KONG_") :].lower(): value for name, value in dockerfile_env().items() if name.startswith("KONG_") and name != cli.LISTEN_ENV}


# ---------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_base_is_pinned_kong() -> None:
    froms = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "kong"
    version = tuple(int(part) for part in tag.split("."))
    assert len(version) == 3, f"pin a full version, not {tag!r}"
    assert version[0] == 3
    assert version >= (3, 8, 0)


def test_dockerfile_runs_as_kong_user() -> None:
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]
    assert users[-1] == "kong"


def test_dockerfile_installs_package_in_virtualenv() -> None:
    runs = " ".join(arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN")
    assert f"python3 -m venv {VIRTUALENV}" in runs
    assert f"{VIRTUALENV}/bin/pip install" in runs
    scripts = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts[CLI_NAME] == "kong_ai_metrics.cli:main"


def test_dockerfile_copies_files_that_exist() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for keyword, arguments in dockerfile_instructions():
        if keyword != "COPY":
            continue
        for source in shlex.split(arguments)[:-1]:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignored, f".dockerignore leaves {source} out of the build context"


def test_dockerfile_exposes_sidecar_port() -> None:
    host, port = parse_listen(dockerfile_env()[cli.LISTEN_ENV])
    assert host == "0.0.0.0"
    exposed = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "EXPOSE"]
    assert exposed == [str(port)]


# ---------------------------------------------------------------------------------
# Dockerfile, kong.conf.sample and the CLI


def test_kong_conf_sample_matches_dockerfile() -> None:
    sample = kong_conf_sample()
    assert sample == docker_env_as_conf()


def test_kong_conf_sample_has_every_setting() -> None:
    sample = kong_conf_sample()
    assert "bundled" in sample["plugins"].split(",")
    assert set(plugin_server_settings(sample)) == {"socket", "start_cmd", "query_cmd"}
    assert nginx_size(sample["nginx_http_client_body_buffer_size"]) >= DEFAULT_MAX_BODY_SIZE
    # nginx keeps only the environment variables its configuration names.
    assert sample["nginx_main_env"] == cli.LISTEN_ENV


def test_plugins_setting_names_queried_plugin(plugin_info: dict[str, Any]) -> None:
    plugins = [name.strip() for name in kong_conf_sample()["plugins"].split(",")]
    assert plugin_info["Name"] in plugins


def test_query_command_prints_plugin_info() -> None:
    command = shlex.split(plugin_server_settings(kong_conf_sample())["query_cmd"])
    assert command[0] == f"{VIRTUALENV}/bin/{CLI_NAME}"
    assert cli._server_parser().parse_args(command[1:]).dump is True

    output = subprocess.run([sys.executable, "-m", "kong_ai_metrics", *command[1:]], capture_output=True, check=True, text=True)
    info = query_plugin_info(output.stdout)
    assert info["Name"] in kong_conf_sample()["plugins"].split(",")


def test_start_command_creates_configured_socket() -> None:
    settings = plugin_server_settings(kong_conf_sample())
    command = shlex.split(settings["start_cmd"])
    assert command[0] == f"{VIRTUALENV}/bin/{CLI_NAME}"
    args = cli._server_parser().parse_args(command[1:])
    assert args.dump is False
    assert os.path.join(args.prefix, args.socket_name) == settings["socket"]


def test_start_command_serves_socket_and_sidecar_from_environment() -> None:
    """Run the start command as Kong would, in a temporary prefix, with the listen address from the environment."""
    settings = plugin_server_settings(kong_conf_sample())
    arguments = shlex.split(settings["start_cmd"])[1:]
    socket_name = os.path.basename(settings["socket"])
    listen = f"127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory(prefix="kong-prefix-") as prefix:
        prefix_index = arguments.index("-p") + 1
        arguments[prefix_index] = prefix
        environment = {**os.environ, cli.LISTEN_ENV: listen}
        process = subprocess.Popen([sys.executable, "-m", "kong_ai_metrics", *arguments, "--quiet"], env=environment)
        try:
            deadline = time.monotonic() + 15
            healthy = False
            while time.monotonic() < deadline and not healthy:
                assert process.poll() is None, f"plugin server exited with {process.returncode}"
                try:
                    with urllib.request.urlopen(f"http://{listen}/healthz", timeout=1) as reply:
                        healthy = reply.status == 200
                except OSError:
                    time.sleep(0.05)
            assert healthy, f"no /healthz on {listen}"
            assert os.path.exists(os.path.join(prefix, socket_name))
        finally:
            process.terminate()
            process.wait(timeout=10)


# ---------------------------------------------------------------------------------
# Declarative config


def declarative() -> dict[str, Any]:
    document = load_yaml(KONG_DECLARATIVE)
    assert isinstance(document, dict)
    return document


def ai_metrics_plugins(plugin_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return each Service's ai-metrics config, validated against the schema from the query command."""
    fields = plugin_info["Schema"]["fields"][0]["config"]["fields"]
    configs = {}
    for service in declarative()["services"]:
        for plugin in service.get("plugins", []):
            assert plugin["name"] == plugin_info["Name"], plugin["name"]
            configs[service["name"]] = validate_config(fields, plugin["config"])
    return configs


def test_declarative_config_structure() -> None:
    document = declarative()
    assert set(document) == {"_format_version", "services"}
    assert document["_format_version"] == "3.0"
    names = [service["name"] for service in document["services"]]
    assert len(names) == len(set(names))
    for service in document["services"]:
        assert set(service) <= {"name", "url", "routes", "plugins"}, service["name"]
        url = urllib.parse.urlsplit(service["url"])
        assert url.scheme == "http"
        assert url.hostname and url.port
        assert service["routes"], service["name"]
        for route in service["routes"]:
            assert set(route) <= {"name", "paths", "strip_path"}
            assert all(path.startswith("/") for path in route["paths"])
            assert route["strip_path"] is True
        assert [p["name"] for p in service["plugins"]] == ["ai-metrics"]


def test_declarative_plugin_configs_validate(plugin_info: dict[str, Any]) -> None:
    configs = ai_metrics_plugins(plugin_info)
    assert set(configs) == {"openai", "anthropic"}
    for name, config in configs.items():
        assert config["ai_metrics"] is True, name
        assert config["buffer_streaming_responses"] is True, name
        assert config["provider"] == name
        assert config["pricing"], name


def test_every_generated_model_has_a_price(plugin_info: dict[str, Any]) -> None:
    configs = {name: PluginConfig.from_kong(config) for name, config in ai_metrics_plugins(plugin_info).items()}
    routes = {route["paths"][0]: service["name"] for service in declarative()["services"] for route in service["routes"]}
    for scenario in traffic.SCENARIOS:
        service = next(name for prefix, name in routes.items() if scenario.path.startswith(prefix + "/"))
        model = scenario.build(traffic.random.Random(0)).get("model")
        if model is None:
            continue  # the request that the provider rejects for lacking a model
        assert configs[service].price_for(model) is not None, f"{scenario.name}: {model} has no price on {service}"


# ---------------------------------------------------------------------------------
# docker-compose.yml, Prometheus and Grafana provisioning


def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) == {"kong", "mock-llm", "traffic", "prometheus", "grafana"}
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for path in volumes(service).values():
            assert path.exists(), f"{name} mounts missing {path}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "build" in service:
            continue
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']}"


def test_compose_kong_runs_dbless_with_declarative_config() -> None:
    kong = compose()["services"]["kong"]
    assert (COMPOSE_FILE.parent / kong["build"] / "Dockerfile").exists()
    environment = kong["environment"]
    assert environment["KONG_DATABASE"] == "off"
    assert volumes(kong)[environment["KONG_DECLARATIVE_CONFIG"]] == KONG_DECLARATIVE.resolve()
    # The compose file adds to the image's settings and must not change them.
    assert not set(environment) & set(dockerfile_env())
    _, sidecar_port = parse_listen(dockerfile_env()[cli.LISTEN_ENV])
    assert f"127.0.0.1:{sidecar_port}:{sidecar_port}" in kong["ports"]


def test_compose_services_reach_each_other() -> None:
    services = compose()["services"]

    # Kong's Services point at the mock provider's listen address.
    mock_command = services["mock-llm"]["command"]
    _, mock_port = parse_listen(mock_command[mock_command.index("--listen") + 1])
    for service in declarative()["services"]:
        url = urllib.parse.urlsplit(service["url"])
        assert (url.hostname, url.port) == ("mock-llm", mock_port)
    assert volumes(services["mock-llm"])[mock_command[1]] == (ROOT / "deploy" / "mock_llm.py").resolve()

    # The traffic generator sends to Kong's proxy, on the routes of the declarative config.
    traffic_command = services["traffic"]["command"]
    base_url = urllib.parse.urlsplit(traffic_command[traffic_command.index("--base-url") + 1])
    _, proxy_port = parse_listen(services["kong"]["environment"]["KONG_PROXY_LISTEN"])
    assert (base_url.hostname, base_url.port) == ("kong", proxy_port)
    route_paths = {route["paths"][0] for service in declarative()["services"] for route in service["routes"]}
    assert {scenario.path.split("/")[1] for scenario in traffic.SCENARIOS} == {path.strip("/") for path in route_paths}
    assert volumes(services["traffic"])[traffic_command[1]] == (ROOT / "deploy" / "traffic.py").resolve()


def test_prometheus_scrapes_kong_sidecar() -> None:
    prometheus = compose()["services"]["prometheus"]
    assert volumes(prometheus)["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG.resolve()
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    (static,) = job["static_configs"]
    _, sidecar_port = parse_listen(dockerfile_env()[cli.LISTEN_ENV])
    assert static["targets"] == [f"kong:{sidecar_port}"]


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed; scripts/test.sh installs Debian's prometheus package"
    checked = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisions_datasource_and_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = volumes(grafana)
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING.resolve()

    (datasource,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True
    url = urllib.parse.urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.hostname in compose()["services"]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert datasource["jsonData"]["timeInterval"] == job["scrape_interval"]

    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "kong-ai-metrics.yaml")["providers"]
    assert provider["type"] == "file"
    dashboards = [path for path, host in mounts.items() if host == (ROOT / "grafana" / "kong-ai-metrics.json").resolve()]
    assert len(dashboards) == 1
    assert os.path.dirname(dashboards[0]) == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboards[0]
    assert json.loads((ROOT / "grafana" / "kong-ai-metrics.json").read_text(encoding="utf-8"))["uid"]

