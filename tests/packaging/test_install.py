"""Install the two wheels like a user and use them from outside the repository.

What happens (module-scoped fixtures; the whole file takes about 20-40 s on two cores):

1. ``python -m build --no-isolation`` builds ``hybridconnections`` (repository root) and
   ``hybridconnections-emulator`` (packaging/emulator) as sdists and then wheels FROM those sdists
   (so both ways of building work), with the shared venv's pinned hatchling: no build backend is
   downloaded.
2. ``python -m venv --without-pip`` makes a fresh venv in a temporary directory outside the
   repository, and pip installs both wheels into it (``pip --python VENV/bin/python install
   --no-index --no-deps``: the shared venv's pinned pip, because bootstrapping a pip into every
   fresh venv with ensurepip took 7-20 s of the test's time on two busy cores).
3. Dependencies: a user's pip would download aiohttp, azure-identity and the rest from PyPI. To stay
   offline and fast, the fresh venv instead sees the shared venv's site-packages (already
   installed from the pinned requirements files) through a ``.pth`` file, which Python appends
   AFTER the venv's own site-packages, so ``relay`` and ``emulator`` can only come from the wheels
   (asserted). Nothing is skipped by this shortcut that a download would have checked: the test
   then verifies that every requirement the wheels declare (the base ones and the ``identity``,
   ``fast`` and ``agent`` extras) is satisfied by the pinned versions, i.e. that the ranges in
   pyproject.toml admit the pins in requirements*.txt.
4. A second fresh venv sees the same dependencies minus azure-identity (a folder of symlinks that
   leaves out ``azure/identity`` and its dist-info): the library without the ``identity`` extra,
   where SAS works and Entra ID says which extra to install.
5. From a temporary working directory, with ``PYTHONPATH`` unset: ``relay --version``; the
   ``relay-emulator`` command (TLS, its generated namespace); ``relay token`` and ``relay send``
   / ``relay listen`` with the connection string the emulator printed, as printed; and a short
   library script (listener + client round trip, SAS and managed identity).

The Functions app does not install these wheels: it deploys the ``relay/`` folder inside the app
package (vendored; README.md "Install"), which ``test_function_app_vendors_the_library`` keeps true.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {"hybridconnections": REPO, "hybridconnections-emulator": REPO / "packaging" / "emulator"}

pytestmark = pytest.mark.slow
TIMINGS: dict[str, float] = {}


def _run(args: list, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _fresh_venv(venv: Path, dependencies: Path, wheels: list[Path]) -> None:
    """A new venv with ``wheels`` installed by pip; ``dependencies`` is appended to its path by a .pth file."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "zz_pinned_dependencies.pth").write_text(f"{dependencies}\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-index", "--no-deps",
          "--disable-pip-version-check", *wheels])


def _user_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RELAY_CONNECTION_STRING", "RELAY_SAS_KEY")
           and not k.startswith(("IDENTITY_", "MSI_", "AZURE_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A temporary folder outside the repository with ``wheels/`` holding both freshly built wheels."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("user")
    assert REPO not in root.parents
    for source in DISTRIBUTIONS.values():
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "wheels", source], cwd=root)
    TIMINGS["build both sdists and wheels"] = time.monotonic() - started
    return root


@pytest.fixture(scope="module")
def installed(built):
    """``(venv, workdir, env, wheels, seconds)``: both wheels installed into a fresh venv outside the repo."""
    started = time.monotonic()
    wheels = built / "wheels"
    venv = built / "venv"
    _fresh_venv(venv, Path(sysconfig.get_paths()["purelib"]), sorted(wheels.glob("*.whl")))
    work = built / "work"
    work.mkdir()
    TIMINGS["fresh venv + pip install"] = time.monotonic() - started
    yield venv, work, _user_env(venv), wheels, TIMINGS["fresh venv + pip install"]


def test_without_the_identity_extra_sas_works_and_entra_names_the_extra(built):
    """The library alone (no azure-identity at all): SAS tokens sign locally; Entra ID says what to install."""
    shared = Path(sysconfig.get_paths()["purelib"])
    deps = built / "deps-without-identity"
    deps.mkdir()
    for entry in shared.iterdir():
        if entry.name.lower().startswith("azure_identity"):
            continue
        if entry.name == "azure":  # a namespace package: keep every azure.* but identity
            (deps / "azure").mkdir()
            for item in entry.iterdir():
                if item.name != "identity":
                    (deps / "azure" / item.name).symlink_to(item)
        else:
            (deps / entry.name).symlink_to(entry)
    venv = built / "venv-without-identity"
    _fresh_venv(venv, deps, sorted((built / "wheels").glob("hybridconnections-*.whl")))
    work = built / "work-without-identity"
    work.mkdir()
    env = _user_env(venv)
    probe = subprocess.run([venv / "bin" / "python", "-c", "import azure.identity"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'azure.identity'" in probe.stderr

    sas = _run(["relay", "token", "sb://127.0.0.1:9/orders", "--sas-key-name", "send-orders"], cwd=work,
               env={**env, "RELAY_SAS_KEY": "a-key"}).stdout
    assert "SAS key 'send-orders'" in sas and "expires:" in sas
    for args in (["token", "sb://127.0.0.1:9/orders"],
                 ["token", "--connection-string", "Endpoint=sb://127.0.0.1:9/;EntityPath=orders;Authentication=Managed Identity"]):
        proc = subprocess.run(["relay", *args], cwd=work, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
        assert "needs the azure-identity package, which is not installed: pip install 'hybridconnections[identity]'" in proc.stderr


def test_wheels_hold_the_packages_commands_and_ranges(installed):
    venv, work, env, wheels, _ = installed
    names = sorted(w.name for w in wheels.iterdir())
    assert names == ["hybridconnections-0.1.0-py3-none-any.whl", "hybridconnections-0.1.0.tar.gz",
                     "hybridconnections_emulator-0.1.0-py3-none-any.whl", "hybridconnections_emulator-0.1.0.tar.gz"]
    script = textwrap.dedent("""
        import json, relay, emulator
        from importlib.metadata import distribution, files
        out = {"relay": relay.__file__, "emulator": emulator.__file__, "version": relay.__version__}
        for name in ("hybridconnections", "hybridconnections-emulator"):
            dist = distribution(name)
            out[name] = {"version": dist.version, "requires": dist.requires or [],
                         "scripts": sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts"),
                         "py.typed": any(str(f).endswith("relay/py.typed") for f in files(name))}
        print(json.dumps(out))
    """)
    info = json.loads(_run([venv / "bin" / "python", "-c", script], cwd=work, env=env).stdout)
    for module in ("relay", "emulator"):
        assert info[module].startswith(str(venv)), f"{module} was imported from {info[module]}, not from the wheel"
    assert info["hybridconnections"]["version"] == info["hybridconnections-emulator"]["version"] == info["version"]
    assert info["hybridconnections"]["scripts"] == ["relay"] and info["hybridconnections"]["py.typed"]
    assert info["hybridconnections-emulator"]["scripts"] == ["relay-emulator"]
    assert f"hybridconnections=={info['version']}" in info["hybridconnections-emulator"]["requires"]

    # Every declared requirement, extras included, admits what the pinned requirements files installed.
    check = textwrap.dedent("""
        import json, sys
        from importlib.metadata import distribution, version, PackageNotFoundError
        from packaging.requirements import Requirement
        problems, seen = [], 0
        for name in ("hybridconnections", "hybridconnections-emulator"):
            for text in distribution(name).requires or []:
                req = Requirement(text)
                extras = [{"extra": e} for e in ("", "identity", "fast", "agent")]
                if req.marker is not None and not any(req.marker.evaluate(x) for x in extras):
                    continue
                seen += 1
                try:
                    have = version(req.name)
                except PackageNotFoundError:
                    problems.append(f"{name}: {req} is not installed")
                    continue
                if not req.specifier.contains(have, prereleases=True):
                    problems.append(f"{name}: {req} does not admit the pinned {have}")
        print(json.dumps({"problems": problems, "checked": seen}))
    """)
    result = json.loads(_run([venv / "bin" / "python", "-c", check], cwd=work, env=env).stdout)
    assert result["problems"] == [] and result["checked"] >= 10


def test_relay_and_emulator_commands_from_any_directory(installed):
    venv, work, env, _, seconds = installed
    version = _run(["relay", "--version"], cwd=work, env=env).stdout
    assert version.strip() == "relay 0.1.0 (hybridconnections)"
    assert "usage: relay-emulator" in _run(["relay-emulator", "--help"], cwd=work, env=env).stdout

    emulator = subprocess.Popen(["relay-emulator", "--state-dir", "state", "--exit-on-stdin-eof"], cwd=work, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    listener = None
    try:
        info = json.loads(emulator.stdout.readline())
        assert info["ca_cert"] == str(work / "state" / "ca.pem")
        printed = info["connection_strings"]["RootManageSharedAccessKey"]
        cs_env = {**env, "RELAY_CONNECTION_STRING": printed}

        token = json.loads(_run(["relay", "token", "--json"], cwd=work, env=cs_env).stdout)
        assert token["token_type"] == "sas" and token["address"] == f"sb://127.0.0.1:{info['port']}/orders"

        listener = subprocess.Popen(["relay", "listen"], cwd=work, env=cs_env, stderr=subprocess.PIPE, text=True)
        for line in listener.stderr:
            if line.startswith("online:"):
                break
        else:
            pytest.fail("relay listen exited before it came online")
        sent = _run(["relay", "send", "--data", "hello from an installed relay"], cwd=work, env=cs_env)
        assert sent.stdout == "hello from an installed relay" and sent.stderr.strip() == "200 OK"
        listener.terminate()
        listener.wait(10)

        (work / "app.py").write_text(textwrap.dedent("""
            import asyncio, os, sys
            import relay
            from relay import HybridConnectionClient, HybridConnectionListener, RelayedHttpResponse

            async def handle(request):
                return RelayedHttpResponse(200, {"Content-Type": "text/plain"}, b"on-prem says " + await request.read())

            async def main():
                sas = os.environ["SAS_STRING"]
                managed = os.environ["MI_STRING"]
                async with HybridConnectionListener.from_connection_string(sas, request_handler=handle):
                    async with HybridConnectionClient.from_connection_string(managed) as client:
                        async with await client.request("POST", "/x", body=b"hi") as resp:
                            print(resp.status, (await resp.read()).decode(), relay.__file__)

            asyncio.run(main())
        """))
        managed = (f"Endpoint=sb://127.0.0.1:{info['port']}/;EntityPath=orders;Authentication=Managed Identity;"
                   f"UseDevelopmentEmulator=true;TrustedCaFile={info['ca_cert']}")
        script_env = {**env, "SAS_STRING": printed, "MI_STRING": managed,
                      "IDENTITY_ENDPOINT": info["identity_endpoint"], "IDENTITY_HEADER": info["identity_header"]}
        out = _run([venv / "bin" / "python", "app.py"], cwd=work, env=script_env).stdout.split()
        assert out[:4] == ["200", "on-prem", "says", "hi"] and out[4].startswith(str(venv))
    finally:
        for proc in (listener, emulator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    sizes = ", ".join(f"{w.name} {w.stat().st_size / 1024:.0f} KiB" for w in sorted(installed[3].glob("*.whl")))
    print("\n" + ", ".join(f"{k}: {v:.1f} s" for k, v in TIMINGS.items()) + f"; {sizes}")


def _funcignore_excludes(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".funcignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = path.split("/")
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if any(fnmatch.fnmatch(prefix, bare) for prefix in ("/".join(parts[: i + 1]) for i in range(len(parts)))):
            return True
    return False


def test_function_app_vendors_the_library():
    """The app deploys relay/ inside its package and installs requirements.txt; the pins satisfy the ranges."""
    for shipped in ("relay/__init__.py", "relay/client.py", "relay/py.typed", "function_app.py", "bridge/__init__.py",
                    "requirements.txt", "host.json"):
        assert not _funcignore_excludes(shipped), f".funcignore would drop {shipped} from the deployment"
    for dropped in ("pyproject.toml", "packaging/emulator/pyproject.toml", "emulator/server.py", "tests/conftest.py"):
        assert _funcignore_excludes(dropped), f".funcignore should keep {dropped} out of the deployment"

    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for text in [*project["dependencies"], *extras["identity"]]:
        req = Requirement(text)
        name = req.name.lower()
        if name == "multidict":  # installed with aiohttp, not pinned on its own
            continue
        assert name in pins, f"the app deploys relay/ but requirements.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name]), f"requirements.txt pins {name}=={pins[name]}, outside {req}"
