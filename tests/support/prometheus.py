"""A real Prometheus server (Debian's ``prometheus``) scraping one target
every second, and readers of the text exposition for the tests."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional

from tests import helpers

# A sample line: name{labels} value
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode("utf-8"))


def samples(text: str) -> Dict[str, float]:
    """``'name{labels}' -> value`` of every sample line of an exposition."""
    found: Dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


class Prometheus:
    """``prometheus`` on an ephemeral port, its data in ``directory``."""

    def __init__(self, directory: Path, target: str) -> None:
        self.port = helpers.free_port()
        config = directory / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          "scrape_configs:\n  - job_name: msmtpd\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        self.args = [helpers.tool("prometheus"), f"--config.file={config}",
                     f"--storage.tsdb.path={directory / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.process: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> Prometheus:
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        helpers.wait_for_port(self.port, process=self.process, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def query(self, expression: str) -> Optional[float]:
        """The value of an instant query with one result, else None."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except OSError:
            return None
        results = answer["data"]["result"]
        return float(results[0]["value"][1]) if len(results) == 1 else None

    def wait_for(self, expression: str, value: float, timeout: float = 60.0) -> None:
        """Until Prometheus has scraped ``expression`` at ``value``."""
        helpers.wait_until(lambda: self.query(expression) == value, timeout,
                           what=f"Prometheus to see {expression} == {value:g}"
                                f" (last: {self.query(expression)})")


def promtool_check(text: str) -> str:
    """``promtool check metrics`` on an exposition: its complaints ('' when clean)."""
    done = subprocess.run([helpers.tool("promtool"), "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).decode()
