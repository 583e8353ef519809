"""The replay command end to end: HAR files in, the table and the exposition out."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from kong_ai_metrics.replay import load_har

from .conftest import EXAMPLES


def run_replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kong_ai_metrics", "replay", *args], capture_output=True, text=True, timeout=120)


def table_rows(output: str) -> dict[str, list[str]]:
    """Return the main table's rows keyed by exchange, split into columns."""
    lines = output.splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_replay_table_shows_reported_counts() -> None:
    result = run_replay(str(EXAMPLES / "openai.har"), str(EXAMPLES / "anthropic.har"), "--config", str(EXAMPLES / "config.yaml"), "--print-metrics")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    # exchange, provider, model, stream, prompt, completion, total, cached, cache_write, reasoning, cost
    assert rows["openai.har#1"][1:10] == ["openai", "gpt-4o-mini", "no", "25", "12", "37", "-", "-", "-"]
    assert rows["openai.har#2"][1:10] == ["openai", "gpt-4o", "yes", "1212", "4", "1216", "1024", "-", "-"]
    assert rows["openai.har#3"][4:10] == ["13", "214", "227", "-", "-", "192"]
    assert rows["anthropic.har#1"][4:10] == ["2009", "14", "2023", "1800", "188", "-"]
    assert rows["anthropic.har#3"][-1] == "stream_error"
    assert rows["openai.har#6"][-1] == "upstream_error"
    assert "Cost split" in result.stdout
    assert 'kong_ai_llm_requests_total{ai_model="gpt-4o-mini"' in result.stdout


def test_replay_rejects_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("ai_metrics: true\npricing:\n  - model: gpt-4o\n    output_cost: 1\n")
    result = run_replay(str(EXAMPLES / "openai.har"), "--config", str(config))
    assert result.returncode == 2
    assert "config.pricing[1].input_cost: required field missing" in result.stderr


def test_replay_rejects_non_har_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.har"
    bogus.write_text("not json")
    result = run_replay(str(bogus))
    assert result.returncode == 2
    assert "not a HAR file" in result.stderr


def test_har_decoded_body_is_reencoded(tmp_path: Path) -> None:
    entries = json.loads((EXAMPLES / "openai.har").read_text())["log"]["entries"]
    captures = load_har(str(EXAMPLES / "openai.har"))
    gzipped = [c for c, e in zip(captures, entries) if any(h["value"] == "gzip" for h in e["response"]["headers"])]
    assert gzipped
    body = gzipped[0].response.body
    assert body[:2] == b"\x1f\x8b"
    assert b'"reasoning_tokens": 192' in gzip.decompress(body)


def test_replay_empty_har_is_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.har"
    empty.write_text('{"log": {"version": "1.2", "entries": []}}')
    result = run_replay(str(empty))
    assert result.returncode == 2
    assert "contain no entries" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_bad_entry_names_file_and_entry(tmp_path: Path) -> None:
    document = json.loads((EXAMPLES / "openai.har").read_text())
    document["log"]["entries"][1]["response"]["content"] = {"text": "not base64!", "encoding": "base64"}
    del document["log"]["entries"][2]["request"]
    broken = tmp_path / "broken.har"
    broken.write_text(json.dumps(document))
    result = run_replay(str(broken))
    assert result.returncode == 2
    assert "broken.har: entry 2 is invalid: response.content.text is not valid base64" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_serve_rejects_port_zero() -> None:
    result = run_replay(str(EXAMPLES / "openai.har"), "--serve", "--metrics-listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "--serve needs a fixed port" in result.stderr


def test_replay_accepts_plugin_entity_config(tmp_path: Path) -> None:
    config = tmp_path / "entity.yaml"
    config.write_text("name: ai-metrics\nconfig:\n  ai_metrics: true\n  model: fallback\n")
    result = run_replay(str(EXAMPLES / "openai.har"), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)["openai.har#1"][4:7] == ["25", "12", "37"]


def test_replay_missing_price_and_summary() -> None:
    result = run_replay(str(EXAMPLES / "ollama.har"), str(EXAMPLES / "openai.har"), "--config", str(EXAMPLES / "config.yaml"))
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    ollama = next(cells for source, cells in rows.items() if source.startswith("ollama.har"))
    assert " ".join(ollama[-5:]) == "no price for this model"
    # gpt-4o-mini at 0.15 and 0.60 per 1M tokens: 25 prompt and 12 completion tokens.
    assert rows["openai.har#1"][10] == "0.00001095"
    assert "kong_ai_llm_requests_total{" not in result.stdout
    assert "series were exposed on http://127.0.0.1:" in result.stdout
