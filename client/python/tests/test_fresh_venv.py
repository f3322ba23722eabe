"""The install test that must hold for every release: in a new virtual environment, `pip install
./client/python` (dependencies from PyPI, kept in a wheelhouse after the first run), then a short script, run
outside the clone, lists the nodes of a running dev server, connects a backend by key, gets the
same backend for the same key, fetches its URL through the proxy, terminates it and sees
TERMINATED; then the same in asyncio."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

from cluster import REPO

SCRIPT = textwrap.dedent('''
    import asyncio, json, os, sys, urllib.request

    import hangar_sdk
    from hangar_sdk import Client, aio

    url, report = sys.argv[1], {"module": hangar_sdk.__file__}
    report["typed"] = os.path.exists(os.path.join(os.path.dirname(hangar_sdk.__file__), "py.typed"))

    def fetch(backend_url):
        with urllib.request.urlopen(backend_url, timeout=10) as response:
            return response.read().decode()

    with Client(url) as client:
        report["nodes"] = sorted(node.name for node in client.list_nodes())
        backend = client.connect("venv/blocking", image="hangar-demo")
        same = client.connect("venv/blocking")
        page = fetch(same.url)
        ended = client.terminate(backend.id, wait=True)
        report["blocking"] = [backend.id, same.id, same.spawned, backend.id in page, str(ended.state)]

    async def main():
        async with aio.Client(url) as client:
            nodes = sorted(node.name for node in await client.list_nodes())
            backend = await client.connect("venv/asyncio", image="hangar-demo")
            same = await client.connect("venv/asyncio")
            page = await asyncio.get_running_loop().run_in_executor(None, fetch, same.url)
            ended = await client.terminate(backend.id, wait=True)
            return [nodes, backend.id, same.id, same.spawned, backend.id in page, str(ended.state)]

    report["asyncio"] = asyncio.run(main())
    print(json.dumps(report))
''')


#: Wheels of the SDK's dependencies (and of setuptools, which builds it), fetched from PyPI once.
WHEELHOUSE = pathlib.Path(os.environ.get("HANGAR_PY_WHEELHOUSE",
                                         pathlib.Path.home() / ".cache" / "hangar-sdk" / "wheels"))


def install(python: pathlib.Path, package: pathlib.Path) -> None:
    """`pip install PACKAGE` as a user types it, with the dependencies from the wheelhouse; when
    it lacks one (first run, a new dependency), the wheelhouse is filled from PyPI and the install
    tried again. The SDK itself is always built from the clone, never taken from the wheelhouse."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    offline = [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", WHEELHOUSE, package]
    if subprocess.run(offline, capture_output=True, env=env, timeout=600).returncode == 0:
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    fill = subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", WHEELHOUSE, package,
                           "setuptools>=68"], capture_output=True, text=True, env=env, timeout=600)
    assert fill.returncode == 0, f"cannot fetch the SDK's dependencies from PyPI:\n{fill.stderr}"
    for wheel in WHEELHOUSE.glob("hangar_sdk-*.whl"):
        wheel.unlink()
    retry = subprocess.run(offline, capture_output=True, text=True, env=env, timeout=600)
    assert retry.returncode == 0, retry.stderr


def test_a_fresh_virtualenv_installs_the_sdk_and_runs_a_backend_lifecycle(dev, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
    python = venv / "bin" / "python"
    install(python, REPO / "client" / "python")

    script = tmp_path / "lifecycle.py"
    script.write_text(SCRIPT)
    run = subprocess.run([python, script, dev.url], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)

    assert report["module"].startswith(str(venv)), "the installed package ran, not the clone's"
    assert report["typed"], "py.typed is installed (PEP 561)"
    assert report["nodes"] == ["dev-drone", "dev-proxy"]
    first, same, spawned, answered, state = report["blocking"]
    assert (same, spawned, answered, state) == (first, False, True, "TERMINATED")
    nodes, first, same, spawned, answered, state = report["asyncio"]
    assert (nodes, same, spawned, answered, state) == (["dev-drone", "dev-proxy"], first, False, True, "TERMINATED")
