"""The README's examples run as written against a real gateway: only the host and the key are replaced, so the README
cannot drift from the product."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MASTER_KEY

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8080"
FAKE_TEXT = "Hello from the fake upstream."


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def runnable(block: str) -> bool:
    # Blocks that talk to a running gateway (the others start one, or are configuration).
    return DEFAULT_URL in block and "./scripts/" not in block


EXAMPLES = [("python", b) for b in blocks("python") if runnable(b)] + [("sh", b) for b in blocks("sh") if runnable(b)]


def test_the_readme_has_the_examples_the_issue_names() -> None:
    text = "\n".join(b for _, b in EXAMPLES)
    assert "curl" in text and "stream=True" in text and '"stream": true' in text and "anthropic.Anthropic" in text
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(("language", "block"), EXAMPLES, ids=[f"{lang}-{i}" for i, (lang, _) in enumerate(EXAMPLES)])
def test_readme_example_runs(gateway, fake_openai, fake_anthropic, language: str, block: str) -> None:
    code = block.replace(DEFAULT_URL, gateway.url).replace("<master key>", MASTER_KEY)
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if '"stream": true' in code:
        # Raw SSE: every word of the answer arrives as a chunk, then the usage chunk, then [DONE].
        assert out.rstrip().endswith("data: [DONE]") and '"cost"' in out
        assert "Hello" in out and "upstream." in out
    elif "curl" in code:
        assert f'"content":"{FAKE_TEXT}"' in out
    else:
        assert out.strip() == FAKE_TEXT


def key_cli_block() -> str:
    [block] = [b for b in blocks("sh") if "keys create" in b]
    return block


def test_readme_key_cli_runs(gateway, tmp_path) -> None:
    """The key commands, line by line, through the wrapper, on the running gateway's store ($CROSSROADS_CONFIG names
    its configuration); `<hash>` is the hash prefix the first `keys create` printed."""
    env = {**os.environ, "CROSSROADS_CONFIG": str(gateway.config_path)}
    root = README.parent
    key_hash = None
    for line in key_cli_block().splitlines():
        command = line.split("  #", 1)[0].strip()
        if not command:
            continue
        if "<hash>" in command:
            assert key_hash is not None
            command = command.replace("<hash>", key_hash[:12])
        done = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "store: " in done.stderr
        if key_hash is None and "keys create" in command:
            key_hash = re.search(r"hash=([0-9a-f]{64})", done.stdout).group(1)
        if command.endswith("keys list --json"):
            import json

            rows = {row["name"]: row for row in json.loads(done.stdout)}
            assert rows["ci"]["limit"] == 5 and rows["batch"]["rpm"] == 60
