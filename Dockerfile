# Kong Gateway with the ai-metrics external plugin.
#
# Kong 3.8 or later: the plugin reads prompts with kong.request.get_raw_body(0), which
# only Kong 3.8 and later answer for a body that nginx spooled to a temporary file.
FROM kong:3.9.1

USER root

# Kong's image has no Python; the plugin server gets its own virtualenv.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /tmp/kong-ai-metrics/
COPY kong_ai_metrics /tmp/kong-ai-metrics/kong_ai_metrics
RUN python3 -m venv /opt/kong-ai-metrics \
    && /opt/kong-ai-metrics/bin/pip install --no-cache-dir /tmp/kong-ai-metrics \
    && rm -rf /tmp/kong-ai-metrics

# The same settings as kong.conf.sample, as environment variables (KONG_ + the
# kong.conf key in capitals).
# - plugins: Kong's bundled plugins plus ai-metrics, the name the query command reports.
# - pluginserver_*: Kong starts the plugin server with START_CMD (and restarts it when
#   it exits), reads its schema with QUERY_CMD, and connects to SOCKET, which
#   kong-ai-metrics creates as <-p prefix>/ai-metrics.socket.
# - nginx_http_client_body_buffer_size: prompts up to this size stay in memory instead
#   of being spooled to a temporary file before the plugin reads them.
# - nginx_main_env: nginx clears the environment of its workers, and Kong starts the
#   plugin server from a worker, so KONG_AI_METRICS_LISTEN only reaches it when nginx
#   is told to keep it.
# - KONG_AI_METRICS_LISTEN: the sidecar serving /metrics and /healthz listens on every
#   interface of the container, so Prometheus can scrape it from outside.
ENV KONG_PLUGINS=bundled,ai-metrics \
    KONG_PLUGINSERVER_NAMES=ai-metrics \
    KONG_PLUGINSERVER_AI_METRICS_SOCKET=/usr/local/kong/ai-metrics.socket \
    KONG_PLUGINSERVER_AI_METRICS_START_CMD="/opt/kong-ai-metrics/bin/kong-ai-metrics -p /usr/local/kong" \
    KONG_PLUGINSERVER_AI_METRICS_QUERY_CMD="/opt/kong-ai-metrics/bin/kong-ai-metrics -dump" \
    KONG_NGINX_HTTP_CLIENT_BODY_BUFFER_SIZE=10m \
    KONG_NGINX_MAIN_ENV=KONG_AI_METRICS_LISTEN \
    KONG_AI_METRICS_LISTEN=0.0.0.0:9542

EXPOSE 9542

USER kong
