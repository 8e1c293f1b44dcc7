"""The HTML report from a synthetic sweep: every chart, the SLO lines and the summary table are in
it; headless Chromium lays the charts out with nothing fetched over the network (a recording proxy
would see it, as a remote-image canary shows); runs with one level or no completed request render."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser

import pytest

from tachyon.bench.charts import nice_ticks, step_points
from tachyon.bench.html_report import render_html
from tachyon.bench.metrics import ERROR, OK, RequestRecord, compute_stats
from tachyon.bench.profiles import LoadLevel
from tachyon.bench.results import BenchmarkResult, BenchRun

SLOS = {"ttft_ms": 300.0, "tpot_ms": 30.0}
NUM_CHARTS = 8  # TTFT, ITL, TPOT, E2E vs load; token and request throughput vs load; TTFT and ITL histograms
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# hosts Chromium calls by itself (component updates, accounts, network time, safe browsing...);
# asset hosts such as fonts.googleapis.com are deliberately not in the list
CHROMIUM_SERVICES = {
    "update.googleapis.com", "accounts.google.com", "clients2.google.com", "clients1.google.com",
    "android.clients.google.com", "clientservices.googleapis.com", "safebrowsing.googleapis.com",
    "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com", "redirector.gvt1.com",
    "edgedl.me.gvt1.com", "dl.google.com",
}  # fmt: skip
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def records(rng: random.Random, n: int, scale: float) -> list[RequestRecord]:
    out = []
    for i in range(n):
        send = 0.1 * i
        ttft = scale * rng.lognormvariate(0, 0.3)
        gaps = [0.02 * scale * rng.lognormvariate(0, 0.2) for _ in range(7)]
        end = send + ttft + sum(gaps)
        out.append(RequestRecord(f"r{i}", send, 8, send, send + ttft, end, gaps, OK, None, 32, 8, "usage"))
    out.append(RequestRecord("bad", 0.0, -1, 0.01, None, 0.02, [], ERROR, "HTTP 400: max_tokens"))
    return out


def sweep_run(slos: dict[str, float] | None = SLOS) -> BenchRun:
    rng = random.Random(0)
    levels = [LoadLevel("synchronous", streams=1), LoadLevel("throughput", streams=64)]
    levels += [LoadLevel("constant", rate=r) for r in (3.0, 5.0, 7.0)]
    run = BenchRun(meta={"profile": "sweep", "model": "m<&>", "url": "http://127.0.0.1:1/v1/completions", "slos": slos})
    for k, level in enumerate(levels):
        recs = records(rng, 30, 0.1 * (k + 1))
        run.benchmarks.append(BenchmarkResult(level, "max_requests", 0.0, compute_stats(recs, level.rate, slos), recs))
    return run


class Elements(HTMLParser):
    """Collects (tag, attributes) of every start tag."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.found.append((tag, dict(attrs)))

    def of(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.found if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 830) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(8.4, 9.9) == [8.0, 8.5, 9.0, 9.5, 10.0]  # the axis draws those inside the data range
    assert nice_ticks(3, 3) == [3]


def test_histogram_outline_steps_through_each_bin():
    assert step_points([0, 1, 2], [5, 3]) == [(0, 0), (0, 5), (1, 5), (1, 3), (2, 3), (2, 0)]


def test_report_has_every_chart_the_slo_lines_and_the_table():
    run = sweep_run()
    html = render_html(run)
    dom = parse(html)
    assert len(dom.of("svg", "chart")) == NUM_CHARTS and not dom.of("svg", "empty")
    # one SLO line each on TTFT vs load, TPOT vs load and the TTFT histogram; none for ITL or E2E
    assert len(dom.of("line", "slo")) == 3
    paths = dom.of("path", "series")
    # median and p99 on 4 latency charts, 2 + 2 throughput series (goodput with SLOs), 5 + 5 histograms
    assert len(paths) == 8 + 4 + 10
    assert all(len(re.findall(r"[ML]", p["d"])) >= 5 for p in paths)  # every series has its points
    rows = re.findall(r"<tr><td>([^<]*)</td>", html.split('class="summary"')[1])
    assert rows == [b.level.label for b in run.benchmarks]
    assert "goodput/s" in html and "m&lt;&amp;&gt;" in html and "m<&>" not in html
    assert "SLO 300 ms" in html and "SLO 30 ms" in html


def test_report_refers_to_no_other_file_or_host():
    html = render_html(sweep_run())
    assert not re.search(r"""\b(src|href|srcset|action|xlink:href)\s*=|url\(|@import|<(script|link|iframe)""", html)


def test_one_level_and_no_completed_request_still_render():
    one = sweep_run(slos=None)
    one.benchmarks = one.benchmarks[:1]
    dom = parse(render_html(one))
    assert len(dom.of("svg", "chart")) == NUM_CHARTS and not dom.of("line", "slo")
    assert len(dom.of("circle", "point")) == 4 * 2 + 2 + 1  # one load level: one marker per series

    failed = RequestRecord("x", 0.0, -1, 0.0, None, 0.1, [], ERROR, "HTTP 400")
    result = BenchmarkResult(LoadLevel("concurrent", streams=2), "max_requests", 0.0, compute_stats([failed]), [failed])
    run = BenchRun({"profile": "concurrent"}, [result])
    html = render_html(run)
    assert len(parse(html).of("svg", "empty")) == 4 + 2  # latency charts and histograms have nothing to draw
    assert "concurrency (streams)" in html  # a concurrent profile is drawn against its stream counts


class RecordingProxy:
    """An HTTP proxy that answers nothing and records the host of every request sent through it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hosts: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                target = conn.recv(4096).decode("latin-1").split(" ")[1:2]  # "CONNECT h:443" / "GET http://h/x"
                host = re.sub(r"^\w+://", "", target[0]).split("/")[0].split(":")[0] if target else "?"
                self.hosts.append(host)

    def page_hosts(self) -> set[str]:
        return set(self.hosts) - CHROMIUM_SERVICES

    def close(self) -> None:
        self.sock.close()


def chromium_dom(path, proxy: RecordingProxy, profile_dir) -> str:
    """The DOM after load, with every http(s) request (loopback included) sent to `proxy`."""
    flags = [f"--user-data-dir={profile_dir}", f"--proxy-server=http://127.0.0.1:{proxy.port}"]
    flags += ["--proxy-bypass-list=<-loopback>", "--dump-dom", path.as_uri()]
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, *flags], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Appended by the test only: measures what the browser laid out, so the DOM dump shows it was drawn.
PROBE = """<script>
const charts = [...document.querySelectorAll("svg.chart")].map(svg => ({
  width: svg.getBoundingClientRect().width,
  lengths: [...svg.querySelectorAll("path.series")].map(p => p.getTotalLength()),
  points: svg.querySelectorAll("circle.point").length,
}));
const rows = document.querySelectorAll("table.summary tr").length;
const out = document.createElement("pre");
out.id = "probe";
out.textContent = JSON.stringify({charts, rows});
document.body.appendChild(out);
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make browser)")
def test_chromium_draws_the_report_without_network(tmp_path):
    report = tmp_path / "run.html"
    report.write_text(render_html(sweep_run()).replace("</body>", PROBE + "</body>"))
    canary = tmp_path / "canary.html"
    canary.write_text('<img src="https://assets.example.com/x.png"><p>canary</p>')
    proxy = RecordingProxy()
    try:
        assert "canary" in chromium_dom(canary, proxy, tmp_path / "profile-canary")
        assert proxy.page_hosts() == {"assets.example.com"}  # the proxy does see a page's requests
        proxy.hosts.clear()
        dom = chromium_dom(report, proxy, tmp_path / "profile-report")
        assert proxy.page_hosts() == set()
    finally:
        proxy.close()
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert probe["rows"] == 1 + 5  # header and one row per benchmark
    assert len(probe["charts"]) == NUM_CHARTS
    for chart in probe["charts"]:
        assert chart["width"] > 100 and chart["lengths"] and min(chart["lengths"]) > 10
    assert [c["points"] for c in probe["charts"][:6]] == [10, 10, 10, 10, 10, 10]
