"""A Flower SuperLink the embedded stack runs for one training: the real `flower-superlink` process, with TLS and
SuperNode authentication on, driven through Flower's own Control API client.

Flower 1.42 serves its Fleet, Control and Runtime APIs over HTTPS on one port.  `LocalSuperLink` starts the
process on a free port with a one-run certificate (`tls.server_tls`), registers the node keys it is given (only
registered SuperNodes may connect: `--enable-supernode-auth`), submits the training as a Flower App bundle
(`flwr run`'s StartRun call; the SuperLink's own SuperExec starts the ServerApp from it) and follows the run
until it finishes.  Flower's processes get their own FLWR_HOME in the run's directory, no telemetry and no
update check, and are stopped with the training: the SuperLink with its process group.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tinymlops.errors import FederatedError
from tinymlops.federated.scripts import flower_environment, stop_group
from tinymlops.federated.tls import server_tls

READY_TIMEOUT_S = 60.0
POLL_S = 0.5


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class RunStatus:
    status: str  # Flower's: pending, starting, running, finished
    sub_status: str  # once finished: completed, failed, stopped
    details: str


class LocalSuperLink:
    """`flower-superlink` on `host`, a free port, TLS and SuperNode authentication on; a context manager."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.tls = server_tls([host, "localhost"])
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self.log_path = workdir / "superlink.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "superlink-ca.pem"

    def start(self) -> LocalSuperLink:
        from flwr.supercore.control import ControlHttpClient

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_path.write_bytes(self.tls.ca_pem)
        cert, key = self.workdir / "superlink.pem", self.workdir / "superlink.key"
        cert.write_bytes(self.tls.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.tls.key_pem)
        self.port = free_port(self.host)
        command = ["flower-superlink", "--ssl-ca-certfile", str(self.ca_path),
                   "--ssl-certfile", str(cert),
                   "--ssl-keyfile", str(key), "--enable-supernode-auth", "--host", self.host, "--port", str(self.port),
                   "--disable-runtime-dependency-installation"]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=flower_environment(self.workdir / "flwr-home"))
        self._client = ControlHttpClient.from_server_address(self.address, False, self.tls.ca_pem, interceptors=[])
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import httpx
        from flwr.proto.control_pb2 import ListNodesRequest

        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise FederatedError(f"flower-superlink exited with code {self._process.returncode}:\n"
                                     f"{log_tail(self.log_path)}")
            try:
                self._client.ListNodes(ListNodesRequest())
                return
            except httpx.TransportError:
                if time.monotonic() >= deadline:
                    raise FederatedError(f"flower-superlink did not answer on {self.address} within "
                                         f"{READY_TIMEOUT_S:g} s:\n{log_tail(self.log_path)}") from None
                time.sleep(POLL_S)

    def register(self, public_key_pem: bytes) -> int:
        """Register a SuperNode's public key (PEM, NIST-curve EC); its Flower node id."""
        from flwr.proto.control_pb2 import RegisterNodeRequest

        return int(self._client.RegisterNode(RegisterNodeRequest(public_key=public_key_pem)).node_id)

    def start_run(self, fab: bytes, config: Mapping[str, Any]) -> int:
        """Submit a Flower App bundle with its run config overrides, as `flwr run` does; the run id."""
        from flwr.common.serde import user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.proto.fab_pb2 import Fab

        response = self._client.StartRun(StartRunRequest(fab=Fab(content=fab),
                                                         override_config=user_config_to_proto(dict(config))))
        return int(response.run_id)

    def status(self, run_id: int) -> RunStatus:
        from flwr.proto.control_pb2 import ListRunsRequest

        info = self._client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        return RunStatus(info.status.status, info.status.sub_status, info.status.details)

    def wait(self, run_id: int, timeout_s: float) -> RunStatus:
        """The run's final status; FederatedError when it has not finished within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (current := self.status(run_id)).status != "finished":
            if time.monotonic() >= deadline:
                raise FederatedError(f"run {run_id} on the SuperLink is still {current.status} after "
                                     f"{timeout_s:g} s")
            time.sleep(POLL_S)
        return current

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is not None:  # the SuperLink stops its SuperExec, which also leaves when its parent is gone
            stop_group(process, signal.SIGTERM)

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
