"""Fixtures: one mock provider process per ModelProvider type, and a sidecar in standalone mode
whose manifests route `via-<type>` (chat) and `embed-<type>` (embeddings) to each of them.

Tests talk to the sidecar with the official SDKs (only the base URL changed) and drive each mock
through its control API (`/__mock/...`) to queue faults and read what the provider received.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN_DIR = Path(os.environ.get("GATEHOUSE_BIN_DIR", Path(__file__).parents[2] / "target" / "debug"))

# Provider types whose sidecar adapter has landed. Tests of the others are strict xfails until
# then: once one passes, strict mode fails the run, which says to add the type here.
LANDED = {"openai", "compatible", "anthropic", "gemini", "azure", "bedrock"}
# Whether the sidecar serves the inbound Anthropic Messages API (`POST /v1/messages`).
MESSAGES_LANDED = True


@dataclass
class Provider:
    """One ModelProvider of the manifests and the mock behind it."""

    name: str  # the route suffix: via-<name>, embed-<name>
    type: str  # ModelProvider spec.type
    model: str  # upstream chat model (deployment for Azure)
    key: str | None  # the key the mock requires, also in the Secret
    embed_model: str | None = None  # upstream embeddings model, if the type has embeddings
    # Further embeddings routes, route name -> upstream model (Bedrock: one per model family).
    extra_embed_routes: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control API ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.origin}/__mock/{path}", data=data, method=method)
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def push(self, *behaviours: dict) -> None:
        """Queue one-shot behaviours (the mock's Behaviour JSON) for the next requests."""
        self._call("POST", "behaviours", list(behaviours))

    def requests(self) -> list[dict]:
        """What the mock received since the last reset."""
        return self._call("GET", "requests")

    def reset(self) -> None:
        self._call("DELETE", "behaviours")
        self._call("DELETE", "requests")


PROVIDERS = [
    Provider("openai", "openai", "gpt-4o-mini", "sk-mock-openai", "text-embedding-3-small"),
    Provider("compatible", "openaiCompatible", "llama-3.1-8b-instruct", None, "nomic-embed-text"),
    Provider("anthropic", "anthropic", "claude-sonnet-4-5", "sk-ant-mock"),
    Provider("gemini", "gemini", "gemini-2.0-flash", "gm-mock-key", "text-embedding-004"),
    Provider("azure", "azureOpenAI", "gpt4o-deploy", "az-mock-key", "embed-deploy"),
    Provider(
        "bedrock",
        "bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "AKIDMOCKEXAMPLE:mock-secret-access-key",
        "amazon.titan-embed-text-v2:0",
        {"embed-bedrock-cohere": "cohere.embed-english-v3"},
    ),
]
BY_NAME = {p.name: p for p in PROVIDERS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()[-4000:]}")


def start_mock(p: Provider, work: Path) -> None:
    p.port = free_port()
    args = [str(BIN_DIR / "gatehouse-mock-provider"), "--listen", f"127.0.0.1:{p.port}", "--quiet"]
    if p.type == "bedrock":
        # The Secret holds ACCESS_KEY_ID:SECRET_ACCESS_KEY; the mock checks the id and region.
        akid, secret = (p.key or ":").split(":", 1)
        args += ["--aws-access-key-id", akid, "--aws-secret-access-key", secret,
                 "--aws-region", "us-east-1"]
    elif p.key:
        args += ["--api-key", p.key]
    log = work / f"mock-{p.name}.log"
    p.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    wait_http(f"{p.origin}/__mock/stats", p.proc, log)


def manifests(work: Path) -> Path:
    """The YAML a user would `kubectl apply` (JSON is YAML): a Secret, a ModelProvider per type,
    a chat Route per type and an embeddings Route per type that has them."""
    docs: list[dict] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "provider-keys"},
            "stringData": {p.name: p.key for p in PROVIDERS if p.key},
        }
    ]
    for p in PROVIDERS:
        spec: dict = {"type": p.type}
        if p.type in ("openai", "openaiCompatible"):
            spec["endpoint"] = f"{p.origin}/v1"
        else:
            spec["endpoint"] = p.origin
        if p.key:
            spec["apiKeySecretRef"] = {"name": "provider-keys", "key": p.name}
        if p.type == "azureOpenAI":
            spec["azure"] = {"apiVersion": "2024-10-21"}
        if p.type == "bedrock":
            spec["bedrock"] = {"region": "us-east-1"}
        # Every chat model priced (USD per million tokens), so tests can check costs.
        spec["models"] = [{"name": p.model, "pricing": PRICING}]
        docs.append({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "ModelProvider",
                     "metadata": {"name": p.name}, "spec": spec})
        routes = [(f"via-{p.name}", p.model)]
        if p.embed_model:
            routes.append((f"embed-{p.name}", p.embed_model))
        routes.extend(p.extra_embed_routes.items())
        for route, model in routes:
            docs.append({
                "apiVersion": "gatehouse.dev/v1alpha1",
                "kind": "Route",
                "metadata": {"name": route},
                "spec": {
                    "targets": [{"provider": p.name, "model": model}],
                    "retry": {"attempts": 2, "backoff": {"base": "10ms", "max": "20ms"}},
                    "timeouts": {"request": "20s", "attempt": "10s", "firstToken": "10s"},
                },
            })
    # A Route whose Budget allows less than any request reserves: every request to it is
    # refused with 429 `budget_exceeded` before anything is sent.
    docs.append({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Route",
                 "metadata": {"name": BUDGETED_ROUTE},
                 "spec": {"targets": [{"provider": "openai", "model": BY_NAME["openai"].model}]}})
    docs.append({"apiVersion": "gatehouse.dev/v1alpha1", "kind": "Budget",
                 "metadata": {"name": BUDGET},
                 "spec": {"limit": {"tokens": 1}, "period": "daily",
                          "scope": {"routes": [BUDGETED_ROUTE]}}})
    path = work / "manifests"
    path.mkdir()
    (path / "all.yaml").write_text("\n---\n".join(json.dumps(d, indent=1) for d in docs) + "\n")
    return path


# The Route covered by a Budget nothing fits in, and that Budget.
BUDGETED_ROUTE = "budgeted"
BUDGET = "sdk-cap"

# The price of every chat model, and what a request of `prompt` and `completion` tokens costs.
PRICING = {"inputPerMillion": "1", "outputPerMillion": "2"}


def cost(prompt: int, completion: int) -> float:
    return (prompt * 1 + completion * 2) / 1e6


@dataclass
class Stack:
    base_url: str  # the sidecar, for the anthropic SDK (it adds /v1/messages)
    openai_base_url: str  # the sidecar's /v1, for the openai SDK
    providers: dict[str, Provider]
    log: Path  # the sidecar's log (text format)

    def access_line(self, request_id: str, timeout: float = 5.0) -> str:
        """The access-log line of `request_id`, once the request ended (a stream's line is
        written when the stream ends)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log.read_text().splitlines():
                if "gatehouse::access" in line and request_id in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access line for {request_id}")
            time.sleep(0.02)

    def logged_cost(self, request_id: str) -> float | None:
        """The `cost_usd` of a request's access line; None when it has none."""
        import re

        m = re.search(r"cost_usd=([0-9.eE+-]+)", self.access_line(request_id))
        return float(m.group(1)) if m else None


@pytest.fixture(scope="session")
def stack():
    with tempfile.TemporaryDirectory(prefix="gatehouse-sdk-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen] = []
        try:
            for p in PROVIDERS:
                start_mock(p, work)
                procs.append(p.proc)
            port, admin = free_port(), free_port()
            log = work / "sidecar.log"
            sidecar = subprocess.Popen(
                [str(BIN_DIR / "gatehouse-sidecar"), "--manifests", str(manifests(work)),
                 "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                 "--log-format", "text"],
                stdout=subprocess.DEVNULL, stderr=log.open("w"),
            )
            procs.append(sidecar)
            wait_http(f"http://127.0.0.1:{admin}/readyz", sidecar, log)
            yield Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1", BY_NAME, log)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture(autouse=True)
def fresh_mocks(request):
    """Every test starts with empty behaviour queues and request logs."""
    if "stack" in request.fixturenames:
        for p in request.getfixturevalue("stack").providers.values():
            p.reset()
    yield


def route_params(names, landed=None, gaps=None):
    """pytest params for provider `names`; those whose adapter has not landed, and the known
    gaps of landed ones (`gaps`: name -> reason), are strict xfails."""
    landed = LANDED if landed is None else landed
    gaps = gaps or {}
    out = []
    for name in names:
        marks = []
        if name not in landed:
            marks = [pytest.mark.xfail(strict=True, reason="adapter not landed")]
        elif name in gaps:
            marks = [pytest.mark.xfail(strict=True, reason=gaps[name])]
        out.append(pytest.param(BY_NAME[name], id=name, marks=marks))
    return out


# The Retry-After the sidecar answers a 429 with when the provider was asked to say 7 s: what
# the provider really sends (a header, or Gemini's RetryInfo in the body), or the sidecar's 1 s
# default for Bedrock, whose ThrottlingException carries no delay.
RATE_LIMIT_SECS = 7
EXPECTED_RETRY_AFTER = {p.name: "1" if p.type == "bedrock" else str(RATE_LIMIT_SECS) for p in PROVIDERS}

ALL = [p.name for p in PROVIDERS]
WITH_EMBEDDINGS = [p.name for p in PROVIDERS if p.embed_model]
