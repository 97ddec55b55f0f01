"""The device side: run Flower's real `flower-supernode` while the participation policy allows it, and stop it
the moment it does not (charger unplugged, metered network, the device in use, consent withdrawn).

The SuperNode authenticates with the device's Flower node key (`nodekey`, bound to its identity key), checks the
SuperLink's certificate against the CA it is given, and names the device's data file in its node config
(`data-path`): the ClientApp reads it on the device and sends back only trained weights.  Its Runtime API (which
its SuperExec uses to start the ClientApp) listens on a free loopback port, so several agents share a host.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinymlops.federated.nodekey import BINDING_FILE
from tinymlops.federated.participation import Participation
from tinymlops.federated.scripts import flower_environment, stop_group
from tinymlops.federated.superlink import free_port, log_tail

POLL_S = 2.0
# flower-supernode's exit codes (Flower's ExitCode) that mean the SuperLink would not have this node.
REFUSED = {305: "the SuperLink refused this node or could not be reached (is its node key registered, i.e. does "
                "the Device carry the tinymlops.io/flower-node-key binding, " + BINDING_FILE + " in the state "
                "directory?)",
           304: "the SuperNode's node key could not be read",
           303: "node authentication needs TLS: give the SuperLink's CA with --root-certificates"}
LOG_FILE = "flower-supernode.log"
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")


def supernode_command(superlink: str, data_path: Path, *, root_certificates: Path | None, node_key: Path | None,
                      runtime_port: int) -> list[str]:
    """The flower-supernode command line; without a CA it connects insecurely (and cannot authenticate)."""
    command = ["flower-supernode", "--superlink", superlink, "--port", str(runtime_port),
               "--node-config", f'data-path="{data_path.resolve()}"', "--max-retries", "3"]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if node_key is not None:
        command += ["--auth-supernode-private-key", str(node_key)]
    return command


@dataclass(frozen=True)
class SuperNodeEnd:
    stopped_by_policy: bool
    exit_code: int | None  # flower-supernode's, when it ended on its own
    reason: str


def explain_exit(code: int, log_path: Path) -> str:
    """Why flower-supernode ended: its process exits 1, the Flower exit code is in its log ("Exit Code: 305")."""
    lines = log_tail(log_path, 40).splitlines()
    flower_code = next((int(match.group(1)) for line in lines if (match := _EXIT_CODE.search(line))), code)
    why = REFUSED.get(flower_code, f"flower-supernode exited with code {code}")
    details = [line.strip() for line in lines if "[code:" in line]
    return why + (f" ({'; '.join(details)})" if details else f"; see {log_path}")


def run_supernode(command: list[str], state_dir: Path, check: Callable[[], Participation], *,
                  poll_s: float = POLL_S, stop: Callable[[], bool] = lambda: False) -> SuperNodeEnd:
    """Run `command` until it exits, `check` stops allowing it, or `stop` says so (a signal); then end it."""
    log_path = state_dir / LOG_FILE
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=flower_environment(state_dir / "flwr-home"))
    try:
        while True:
            code = process.poll()
            if code is not None:
                return SuperNodeEnd(False, code, explain_exit(code, log_path) if code else "the SuperNode ended")
            if stop():
                return SuperNodeEnd(False, None, "stopped on request")
            verdict = check()
            if not verdict.allowed:
                return SuperNodeEnd(True, None, f"stopped: {verdict.reason}")
            time.sleep(poll_s)
    finally:
        _end(process)


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGINT first: Flower deactivates the node on the SuperLink before it exits; the group we started after."""
    stop_group(process, signal.SIGINT)


def runtime_port() -> int:
    return free_port("127.0.0.1")
