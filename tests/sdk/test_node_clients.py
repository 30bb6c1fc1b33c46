"""The Node client suite (tests/sdk/node: the `openai` and `@anthropic-ai/sdk` packages and the
Vercel AI SDK), run with node's test runner against this session's sidecar and mocks. Its
packages are installed by tests/sdk/run from package-lock.json into the cache and linked as
tests/sdk/node/node_modules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROVIDERS

NODE_DIR = Path(__file__).parent / "node"


def test_node_clients(stack):
    if not shutil.which("node") or not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("node and the suite's packages are needed: run tests/sdk/run")
    env = dict(os.environ)
    env["GATEHOUSE_BASE_URL"] = stack.base_url
    env["GATEHOUSE_PROVIDERS"] = json.dumps([{"name": p.name, "model": p.model} for p in PROVIDERS])
    run = subprocess.run(
        ["node", "--test", "--test-concurrency=1", "test/"],
        cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=600,
    )
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
