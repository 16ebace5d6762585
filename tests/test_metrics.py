"""Triton's Prometheus metrics for the whole pipeline, the loopback-only metrics port, and the Grafana
dashboard (dashboards/grafana/fv2es.json) checked against what the real server exports.

One real request goes through the client between two scrapes of `/metrics`; the counters of the
ensemble and of every step must move by what that request did. The scrape (the Prometheus text
format, version 0.0.4) is parsed with prometheus_client.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fv2es import config, model_configs, pipeline
from fv2es.tritonserver import REPOSITORY
from fv2es_build.repository import served_models

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "grafana" / "fv2es.json"

ENSEMBLE = config.ENSEMBLE_NAME  # "fv2es"
STEPS = tuple(step.name for step in served_models(pipeline.steps()))  # the ensemble's models, its copy model too
PER_MODEL_DURATIONS = (
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_duration_us",
)
# Metrics the dashboard may query although this machine's scrape lacks them. Triton exports nv_gpu_*
# only where it finds an NVIDIA GPU (through DCGM); the development machine and CI are CPU-only.
# Keep this list to what the GPU panels need: anything else the dashboard names must be in the scrape.
NOT_EXPORTED_WITHOUT_GPU = {
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
}


# --- the Prometheus text format -----------------------------------------------------------------

@dataclass
class Scrape:
    """One scrape: samples by (name, labels), and the # TYPE / # HELP of each metric family."""

    text: str
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def select(self, name: str, **labels: str) -> dict[frozenset, float]:
        """Every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {key: value for (n, key), value in self.samples.items() if n == name and wanted <= key}

    def lines_for(self, model: str) -> list[str]:
        return [line for line in self.text.splitlines() if f'model="{model}"' in line]


def parse_prometheus(text: str) -> Scrape:
    scrape = Scrape(text)
    for family in text_string_to_metric_families(text):
        scrape.types[family.name] = family.type
        scrape.help[family.name] = family.documentation
        for sample in family.samples:
            # prometheus_client names a counter's samples the OpenMetrics way, <name>_total; Triton's
            # counters (and the dashboard's queries) are named without the suffix: the family's name.
            name = family.name if family.type == "counter" else sample.name
            key = (name, frozenset(sample.labels.items()))
            if key in scrape.samples:
                raise ValueError(f"the scrape repeats a series: {name} {sample.labels}")
            scrape.samples[key] = float(sample.value)
    return scrape


def test_the_parser_reads_the_text_format():
    scrape = parse_prometheus(
        "# HELP a_count A counter\n# TYPE a_count counter\n"
        'a_count{model="m",version="1"} 3\n'
        'a_count{model="odd \\"quoted\\", \\\\ and\\nnewline",version="1",} 4 1700000000000\n'
        "# a plain comment\n\n"
        "# TYPE b_gauge gauge\nb_gauge NaN\nc_gauge +Inf\n"
    )
    assert scrape.types["a_count"] == "counter" and scrape.types["b_gauge"] == "gauge"
    assert scrape.help["a_count"] == "A counter"
    assert scrape.get("a_count", model="m", version="1") == 3  # a counter keeps its name, as Triton writes it
    assert scrape.get("a_count", model='odd "quoted", \\ and\nnewline', version="1") == 4
    assert math.isnan(scrape.get("b_gauge")) and scrape.get("c_gauge") == math.inf
    assert scrape.names == {"a_count", "b_gauge", "c_gauge"}
    for bad in ("a_count{model=m} 1", 'a_count{model="m"}', "3 a_count", 'a{x="1",x="2"} 1', "a 1\na 2"):
        with pytest.raises(ValueError):
            parse_prometheus(bad)


# --- the scrape around one real request ---------------------------------------------------------

def metrics_url(server) -> str:
    return f"http://{server.local_address}:{server.metrics_port}/metrics"


def scrape(server) -> Scrape:
    with urllib.request.urlopen(metrics_url(server), timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers.get_content_type() == "text/plain"
        return parse_prometheus(reply.read().decode())


def success(s: Scrape, model: str) -> float:
    return s.get("nv_inference_request_success", model=model, version="1") or 0.0


def model_config(model: str) -> model_configs.ModelConfig:
    return model_configs.read(REPOSITORY / model / "config.pbtxt")


def batched_models() -> list[str]:
    """The steps with dynamic batching (max_batch_size > 0): the three encoders."""
    return [model for model in STEPS if model_config(model).max_batch_size > 0]


@pytest.fixture(scope="module")
def scrapes(server, client, sample_bytes) -> tuple[Scrape, Scrape]:
    """(before, after) one request of the sample through the client."""
    before = scrape(server)
    result = client.analyze(sample_bytes)
    assert result.segments
    # The counters are updated when each request is released, which may trail the reply a little.
    deadline = time.monotonic() + 15
    while True:
        after = scrape(server)
        if all(success(after, m) > success(before, m) for m in (ENSEMBLE, *STEPS)) or time.monotonic() > deadline:
            return before, after
        time.sleep(0.2)


def test_the_steps_are_the_ensembles():
    steps = [step.model_name for step in model_config(ENSEMBLE).ensemble_scheduling.step]
    assert sorted(set(steps)) == sorted(STEPS)
    assert sorted(batched_models()) == sorted(step.name for step in pipeline.batched_steps())


def test_one_request_moves_every_models_counters(scrapes):
    before, after = scrapes
    print(f"\n--- scrape after one request, {ENSEMBLE} ---")
    print("\n".join(after.lines_for(ENSEMBLE)))
    print("--- visual_encoder ---")
    print("\n".join(after.lines_for("visual_encoder")))

    # The ensemble is counted once; each step once as well (Triton counts the steps it runs for an
    # ensemble as requests of those models), at least once in case anything else used them.
    assert success(after, ENSEMBLE) - success(before, ENSEMBLE) == 1
    for model in STEPS:
        assert success(after, model) - success(before, model) >= 1, model

    for model in (ENSEMBLE, *STEPS):
        labels = {"model": model, "version": "1"}
        for name in PER_MODEL_DURATIONS:
            assert after.get(name, **labels) is not None, f"{name} missing for {model}"
            assert after.types.get(name) == "counter", name
        for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"):
            assert after.get(name, **labels) > (before.get(name, **labels) or 0), (name, model)
        # Queue time is a whole number of microseconds. The steps queue for hundreds of them (the
        # encoders wait up to max_queue_delay for a batch); the ensemble's own queue time is the moment
        # its scheduler takes the request, 0-2 us, so it may round to no increase at all.
        queued = after.get("nv_inference_queue_duration_us", **labels) - (before.get("nv_inference_queue_duration_us", **labels) or 0)
        assert queued > 0 if model != ENSEMBLE else queued >= 0, (model, queued)
        # Nothing failed, for any reason.
        failures_before, failures_after = (s.select("nv_inference_request_failure", **labels) for s in (before, after))
        assert failures_after and failures_after == {k: failures_before.get(k, 0.0) for k in failures_after}, model
        assert {dict(k)["reason"] for k in failures_after} >= {"BACKEND", "REJECTED"}, model
        assert after.get("nv_inference_pending_request_count", **labels) == 0, model
        assert after.types.get("nv_inference_pending_request_count") == "gauge"

    # The ensemble's compute time is the sum of its steps' (which partly run at the same time), so it
    # may exceed its request duration: the dashboard says so.
    step_infer = sum(after.get("nv_inference_compute_infer_duration_us", model=m, version="1")
                     - (before.get("nv_inference_compute_infer_duration_us", model=m, version="1") or 0) for m in STEPS)
    ensemble_infer = (after.get("nv_inference_compute_infer_duration_us", model=ENSEMBLE, version="1")
                      - (before.get("nv_inference_compute_infer_duration_us", model=ENSEMBLE, version="1") or 0))
    assert ensemble_infer == pytest.approx(step_infer, rel=0.01)


def test_the_encoders_report_their_batch_sizes(scrapes):
    before, after = scrapes
    for model in batched_models():
        labels = {"model": model, "version": "1"}
        count, executions = (after.get(n, **labels) for n in ("nv_inference_count", "nv_inference_exec_count"))
        assert count is not None and executions is not None, model
        assert after.types["nv_inference_count"] == after.types["nv_inference_exec_count"] == "counter"
        rows = count - (before.get("nv_inference_count", **labels) or 0)
        runs = executions - (before.get("nv_inference_exec_count", **labels) or 0)
        # The video's rows arrive as one request of batch N: at least one execution, at least one row each.
        assert runs >= 1 and rows >= runs, (model, rows, runs)
        print(f"{model}: {rows:.0f} rows in {runs:.0f} execution(s), mean batch size {rows / runs:.1f}")
    # The unbatched models count one inference per execution.
    for model in (ENSEMBLE, *(m for m in STEPS if m not in batched_models())):
        labels = {"model": model, "version": "1"}
        assert after.get("nv_inference_count", **labels) == after.get("nv_inference_exec_count", **labels), model


# --- the metrics port is on loopback only -------------------------------------------------------

def interface_addresses() -> list[tuple[int, tuple]]:
    """(family, sockaddr) of every address this machine's interfaces have, IPv4 and IPv6 (Linux)."""
    found = []
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family == socket.AF_INET:
                found.append((socket.AF_INET, (address.address,)))
            elif address.family == socket.AF_INET6:  # a link-local address ends in %<interface>
                found.append((socket.AF_INET6, (address.address.split("%")[0], 0, socket.if_nametoindex(name))))
    return found


def non_loopback_addresses() -> list[tuple[int, tuple]]:
    return [(family, sockaddr) for family, sockaddr in interface_addresses() if not ipaddress.ip_address(sockaddr[0]).is_loopback]


def test_the_metrics_port_answers_on_loopback_only(server):
    assert server.address == config.BIND_ADDRESS == "127.0.0.1"
    assert f"--metrics-address={server.address}" in server.command()
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5):
        pass  # the loopback address is served
    others = non_loopback_addresses()
    if not others:
        pytest.skip("this machine has no address besides loopback")
    for family, sockaddr in others:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            with pytest.raises(ConnectionRefusedError):
                s.connect((sockaddr[0], server.metrics_port, *sockaddr[1:]))
    print(f"metrics port {server.metrics_port} refused on {', '.join(a[0] for _, a in others)}")


# --- the Grafana dashboard ----------------------------------------------------------------------

def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, also those inside (collapsed) rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        queries.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
        if isinstance(variable.get("definition"), str):
            queries.append(variable["definition"])
    return queries


def test_the_dashboard_queries_only_metrics_triton_exports(scrapes):
    _, after = scrapes
    dashboard = json.loads(DASHBOARD.read_text())
    referenced = {name for query in dashboard_queries(dashboard) for name in re.findall(r"nv_[a-z_]+", query)}
    assert referenced, "the dashboard queries no Triton metric"
    missing = referenced - after.names - NOT_EXPORTED_WITHOUT_GPU
    assert not missing, f"the dashboard queries metrics this tritonserver does not export: {sorted(missing)}"
    # The allow-list is only for the GPU panels, and every entry is used.
    assert all(name.startswith("nv_gpu_") for name in NOT_EXPORTED_WITHOUT_GPU)
    assert NOT_EXPORTED_WITHOUT_GPU <= referenced
    # The per-model metrics the test above checks are all on the dashboard.
    assert {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", *PER_MODEL_DURATIONS} <= referenced


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and "label_values(nv_inference_request_success, model)" in json.dumps(model["query"])
    assert model["datasource"]["uid"] == "${DS_PROMETHEUS}"
    panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel.get("description"), panel["title"]
        assert panel["targets"], panel["title"]
        exprs = [t["expr"] for t in panel["targets"]]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for expr in exprs:
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            if "model" in expr and "nv_inference" in expr:  # per-model queries follow the model variable
                assert 'model=~"$model"' in expr or f'model="{ENSEMBLE}"' in expr, expr
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if any(re.search(r"nv_inference_\w+_duration_us", e) for e in exprs):
            assert unit == "µs", panel["title"]
        if panel["type"] == "timeseries" and any("by (model" in e for e in exprs):
            assert all("{{model}}" in t["legendFormat"] for t in panel["targets"]), panel["title"]
    gpu = [p for p in panels if any("nv_gpu_" in t["expr"] for t in p["targets"])]
    assert gpu and all("no GPU" in p["description"] for p in gpu)
