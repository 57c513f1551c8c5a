"""Render manifests/dashboards/kube-ip-tracker.json to docs/dashboard.png from real metrics (needs root).

Runs the demo stack (two clusters, a tracker and an agent per cluster) with traffic (allowed and
denied HTTP, a UDP flood, the demo's policy steps, one API server stopped for a while), scrapes
every tracker and agent with a real Prometheus (Debian's ``prometheus`` package) every second,
then evaluates each panel's queries with Prometheus' ``query_range`` and draws the panels where the
dashboard puts them (matplotlib; ``pip install -e '.[docs]'``). Everything is stopped at the end.

    sudo .venv/bin/python hack/render_dashboard.py [--seconds 150] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from kube_ip_tracker.demo import scenario
from kube_ip_tracker.demo.stack import DemoSettings, DemoStack
from kube_ip_tracker.testing.clusters import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "manifests" / "dashboards" / "kube-ip-tracker.json"


def prometheus_config(targets: dict[str, list[int]]) -> str:
    jobs = []
    for job, ports in targets.items():
        hosts = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
        jobs.append(f"  - job_name: {job}\n    static_configs:\n      - targets: [{hosts}]\n")
    return "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n" + "".join(jobs)


def query_range(port: int, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, metric: dict[str, str]) -> str:
    out = fmt
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return " ".join(part for part in out.split() if not part.startswith("{{")) or "value"


async def traffic(stack: DemoStack, seconds: float) -> None:
    """Allowed and denied connections, the demo's policy steps, a UDP flood, a cluster down and back."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    steps = list(scenario.STEPS)
    applied = 0
    tick = 0
    while loop.time() < end:
        tick += 1
        if tick % 12 == 0 and applied < len(steps):
            for change in steps[applied].changes:
                await stack.apply(change)
            applied += 1
        if tick == 40:
            assert stack.clusters is not None
            await asyncio.to_thread(stack.clusters[0].stop_apiserver)
        if tick == 70:
            assert stack.clusters is not None
            await asyncio.to_thread(stack.clusters[0].start_apiserver)
        await asyncio.gather(
            stack.http("client-c1", "web-c2", 0.3),
            stack.http("client-other", "web-c2", 0.3),
            stack.udp("client-other", "web-c2", 0.2),
            return_exceptions=True,
        )
        if tick % 5 == 0:  # a burst of denied datagrams: one log line, the rest suppressed
            await asyncio.gather(
                *(stack.udp("client-other", "web-c2", 0.05) for _ in range(20)), return_exceptions=True
            )
        await asyncio.sleep(0.5)


def draw(
    panels: list[dict], data: dict[int, list[tuple[str, list[float], list[float]]]], out: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.42
    fig = plt.figure(figsize=(24 * unit_w, bottom * unit_h + 0.8), facecolor="#111217")
    fig.suptitle(title, color="#d8d9da", x=0.01, ha="left", fontsize=14)
    height = bottom * unit_h + 0.8
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        top = (g["y"] * unit_h + 0.6) / height
        h = g["h"] * unit_h / height
        if panel["type"] == "row":
            fig.text(left + 0.005, 1 - top - h / 2, panel["title"], color="#d8d9da", fontsize=12, weight="bold")
            continue
        ax = fig.add_axes((left + 0.006, 1 - top - h + 0.012, width - 0.012, h - 0.03), facecolor="#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        series = data.get(panel["id"], [])
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            values = [vs[-1] for _, _, vs in series if vs and not math.isnan(vs[-1])]
            text = "No data" if not values else _fmt(sum(values), unit)
            ax.text(0.5, 0.5, text, color="#73bf69", fontsize=22, ha="center", va="center", transform=ax.transAxes)
            continue
        for name, xs, ys in series:
            ax.plot(xs, ys, linewidth=1.2, label=name)
        if series:
            ax.legend(fontsize=6, loc="upper left", frameon=False, labelcolor="#c7d0d9", ncol=2)
        ax.set_xlabel("seconds", color="#8e8e8e", fontsize=7)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def _fmt(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "s":
        return f"{value * 1e6:.0f} µs" if value < 1e-3 else f"{value * 1e3:.1f} ms"
    if unit == "reqps":
        return f"{value:.2f}/s"
    return f"{value:g}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("prometheus not found: apt-get install prometheus")
    dashboard = json.loads(DASHBOARD.read_text())
    settings = DemoSettings(subnet="10.102.0.0/16", prefix="kipdash", mark_slots=(4, 5), tracker_metrics=True)
    workdir = Path(tempfile.mkdtemp(prefix="kip-dashboard-"))
    prom: subprocess.Popen[bytes] | None = None
    async with DemoStack(settings) as stack:
        targets = {
            "kube-ip-tracker": [t.metrics_port for t in stack.trackers],
            "kube-ip-agent": list(stack.agent_metrics.values()),
        }
        (workdir / "prometheus.yml").write_text(prometheus_config(targets))
        port = free_port()
        prom = subprocess.Popen(  # noqa: ASYNC220 (a long-running server, started once)
            [prometheus, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"),
        )  # fmt: skip
        try:
            start = time.time()
            await traffic(stack, args.seconds)
            await asyncio.sleep(3)
            end = time.time()
            data: dict[int, list[tuple[str, list[float], list[float]]]] = {}
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    for result in query_range(port, target["expr"], start, end, 2.0):
                        xs = [float(t) - start for t, _ in result["values"]]
                        ys = [float(v) for _, v in result["values"]]
                        data.setdefault(panel["id"], []).append(
                            (legend(target["legendFormat"], result["metric"]), xs, ys)
                        )
        finally:
            prom.terminate()
            await asyncio.to_thread(prom.wait, 20)
    draw(dashboard["panels"], data, args.out, f"{dashboard['title']} (demo stack, {args.seconds:.0f} s, real metrics)")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
