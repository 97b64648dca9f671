"""The web console's HTTP side, against a real control plane: auth, one write path, safety."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshbreaker.cli import build_parser
from meshbreaker.control.auth import TokenAuthenticator
from meshbreaker.control.console.api import MeshRead
from meshbreaker.control.console.bridge import HttpCallContext
from meshbreaker.control.console.feed import MeshCache
from meshbreaker.control.console.http import CONTENT_SECURITY_POLICY
from meshbreaker.control.console.server import ConsoleServer
from meshbreaker.control.server import ServerOptions
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.conftest import bearer
from tests.server_support import ServerThread, wait_until
from tests.tls_support import issue, pem

ADMIN, AGENT = "admin-secret", "agent-secret"
METHOD = "/bank.v1.AccountService/GetBalance"

StartThread = Callable[..., ServerThread]
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def console(control_plane_thread: StartThread) -> Iterator[tuple[ServerThread, str]]:
    """A control plane with tokens and its console: (the server, the console's URL)."""
    server = control_plane_thread(console_port=0, admin_token=ADMIN, agent_token=AGENT)
    url = server.running.console_url
    assert url == f"http://127.0.0.1:{server.running.console_port}/"
    yield server, url


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=url, headers=headers, timeout=10.0)


def _grpc_refusal(
    target: str, token: str | None, call: Callable[[pb_grpc.ControlPlaneStub, Metadata], object]
) -> str:
    """The details the gRPC API refuses `call(stub, metadata)` with."""
    metadata: Metadata = () if token is None else bearer(token)
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
        call(pb_grpc.ControlPlaneStub(channel), metadata)
    return str(refused.value.details())


def test_the_console_is_off_unless_asked_for(control_plane_thread: StartThread) -> None:
    server = control_plane_thread()
    assert server.running.console_url is None and server.running.console_port is None


def test_every_answer_carries_a_strict_content_security_policy(
    console: tuple[ServerThread, str],
) -> None:
    _, url = console
    with _client(url, ADMIN) as client:
        for path in ("/", "/static/app.js", "/static/console.css", "/api/session", "/nowhere"):
            answer = client.get(path)
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
        page = client.get("/").text
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    # Nothing inline the policy would have to allow: no script body, no style attribute.
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert '<script type="module" src="/static/app.js"></script>' in page


def test_reads_need_a_token_as_the_grpc_api_does(console: tuple[ServerThread, str]) -> None:
    server, url = console
    expected = _grpc_refusal(
        server.target,
        None,
        lambda stub, metadata: stub.ListBreakers(pb.ListBreakersRequest(), metadata=metadata),
    )
    with _client(url) as client:
        answer = client.get("/api/session")
    assert answer.status_code == 401
    assert answer.json() == {"code": "UNAUTHENTICATED", "message": expected}
    with _client(url, "wrong") as client:
        assert client.get("/api/stream").status_code == 401
    with _client(url, AGENT) as client:
        assert client.get("/api/session").json()["role"] == "agent"
        assert client.get("/api/session").json()["can_write"] is False
    with _client(url, ADMIN) as client:
        assert client.get("/api/session").json()["can_write"] is True


def test_the_agent_token_cannot_write(console: tuple[ServerThread, str]) -> None:
    server, url = console
    with _client(url, AGENT) as client:
        answer = client.post("/api/force", json={"method": METHOD, "override": "open"})
    assert answer.status_code == 403
    assert answer.json() == {
        "code": "PERMISSION_DENIED",
        "message": "/meshbreaker.v1.ControlPlane/ForceState needs the admin token",
    }
    with grpc.insecure_channel(server.target) as channel:
        policies = pb_grpc.ControlPlaneStub(channel).ListPolicies(
            pb.ListPoliciesRequest(), metadata=bearer(ADMIN)
        )
    assert list(policies.policies) == []


def test_a_refused_put_says_what_the_grpc_api_says(console: tuple[ServerThread, str]) -> None:
    server, url = console
    entry = {"id": "mismatch", "selector": {"service": "bank.v1.A", "method": "/bank.v1.B/M"}}
    policy = pb.Policy(
        id="mismatch", selector=pb.Selector(service="bank.v1.A", method="/bank.v1.B/M")
    )
    policy.config.SetInParent()
    expected = _grpc_refusal(
        server.target,
        ADMIN,
        lambda stub, metadata: stub.PutPolicy(
            pb.PutPolicyRequest(policies=[policy]), metadata=metadata
        ),
    )
    with _client(url, ADMIN) as client:
        answer = client.post("/api/policies/put", json={"policy": entry})
    assert answer.status_code == 400
    assert answer.json() == {"code": "INVALID_ARGUMENT", "message": expected}
    assert "selector.method" in expected


def test_an_explain_whose_policies_do_not_resolve_answers_why(
    console: tuple[ServerThread, str],
) -> None:
    server, url = console
    mesh = pb.Policy(id="mesh", selector=pb.Selector())
    mesh.config.failure_codes.codes.append("UNAVAILABLE")
    ignoring = pb.Policy(id="ignoring", selector=pb.Selector(service="bank.v1.AccountService"))
    ignoring.config.ignored_codes.codes.append("UNAVAILABLE")
    with grpc.insecure_channel(server.target) as channel:
        pb_grpc.ControlPlaneStub(channel).PutPolicy(
            pb.PutPolicyRequest(policies=[mesh, ignoring]), metadata=bearer(ADMIN), timeout=10
        )
    with _client(url, AGENT) as client:
        answer = client.get("/api/explain", params={"caller": "gateway", "method": METHOD})
    assert answer.status_code == 200, answer.text
    explained = answer.json()
    assert explained["error"].startswith("the policies for gateway do not resolve: ")
    assert "UNAVAILABLE" in explained["error"] and "policies mesh, ignoring" in explained["error"]
    assert "layered" not in explained and explained["instances"] == []


def test_a_query_parameter_given_twice_counts_once_its_first_value(
    console: tuple[ServerThread, str],
) -> None:
    _, url = console
    with _client(url, AGENT) as client:
        answer = client.get(
            "/api/explain", params=[("caller", "gateway"), ("caller", "ledger"), ("method", METHOD)]
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["caller"] == "gateway"


def test_writes_from_the_console_are_the_grpc_apis_writes(
    console: tuple[ServerThread, str],
) -> None:
    server, url = console
    entry = {
        "id": "balance",
        "selector": {"method": METHOD},
        "config": {"failure_rate_threshold": "0.25", "open_duration": "30s"},
        "description": "<b>tight</b>",
    }
    with _client(url, ADMIN) as client:
        put = client.post("/api/policies/put", json={"policy": entry})
        assert put.status_code == 200, put.text
        stale = client.post("/api/policies/put", json={"policy": entry, "expected_revision": 0})
        forced = client.post(
            "/api/force", json={"caller": "gateway", "method": METHOD, "override": "closed"}
        )
        listed = client.get("/api/policies").json()
    assert stale.status_code == 409 and stale.json()["code"] == "ABORTED"
    assert forced.status_code == 200, forced.text
    with grpc.insecure_channel(server.target) as channel:
        stored = pb_grpc.ControlPlaneStub(channel).ListPolicies(
            pb.ListPoliciesRequest(), metadata=bearer(ADMIN)
        )
    by_id = {policy.id: policy for policy in stored.policies}
    assert by_id["balance"].config.failure_rate_threshold == 0.25
    assert by_id["balance"].description == "<b>tight</b>"
    assert by_id["balance"].updated_by.startswith("admin@console:127.0.0.1:")
    forced_policy = next(policy for policy in stored.policies if policy.id != "balance")
    assert forced_policy.override == pb.OVERRIDE_FORCED_CLOSED
    assert forced_policy.selector.caller == "gateway"
    # The page gets back what `policy list --json` prints, and the form's spelling of each field.
    entries = {item["document"]["id"]: item for item in listed["policies"]}
    assert entries["balance"]["form"] == {
        "description": "<b>tight</b>",
        "config.failure_rate_threshold": "0.25",
        "config.open_duration": "30.0",
    }
    assert entries["balance"]["sections"] == ["config"]
    assert entries["balance"]["document"]["selector"] == {"method": METHOD}
    with _client(url, ADMIN) as client:
        deleted = client.post("/api/policies/delete", json={"id": "balance"})
        missing = client.post("/api/policies/delete", json={"id": "balance"})
    assert deleted.status_code == 200
    assert missing.status_code == 404 and "balance" in missing.json()["message"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "words"),
    [
        ({"Content-Type": "text/plain"}, b"{}", 400, "application/json"),
        ({"Content-Type": "application/json"}, b"[1]", 400, "JSON object"),
        ({"Content-Type": "application/json"}, b"{not json", 400, "not JSON"),
        (
            {"Content-Type": "application/json", "Origin": "http://evil.example"},
            b"{}",
            403,
            "cross-origin",
        ),
        ({"Content-Type": "application/json"}, b"{" + b" " * 300_000 + b"}", 413, "over"),
        # Sent in chunks: no Content-Length to read the body by.
        ({"Content-Type": "application/json"}, iter([b"{}"]), 400, "Content-Length is needed"),
    ],
)
def test_bad_writes_are_refused_before_anything_runs(
    console: tuple[ServerThread, str],
    headers: dict[str, str],
    body: bytes | Iterator[bytes],
    status: int,
    words: str,
) -> None:
    _, url = console
    with _client(url, ADMIN) as client:
        answer = client.post("/api/force", content=body, headers=headers)
    assert answer.status_code == status
    assert words in answer.json()["message"]


def test_an_open_console_answers_only_to_addresses(control_plane_thread: StartThread) -> None:
    """Without tokens, a DNS name pointing at loopback (rebinding) gets nothing."""
    server = control_plane_thread(console_port=0)
    url = server.running.console_url
    assert url is not None
    with _client(url) as client:
        assert client.get("/api/session").json()["role"] == "open"
        refused = client.get(
            "/api/session", headers={"Host": f"rebind.example:{url.split(':')[-1]}"}
        )
    assert refused.status_code == 421


def test_the_feed_opens_with_hello_the_history_and_the_mesh_which_a_plain_read_gives_too(
    console: tuple[ServerThread, str],
) -> None:
    _, url = console
    with _client(url, ADMIN) as client:
        client.post("/api/force", json={"method": METHOD, "override": "open"})
        seen: dict[str, list[object]] = {}
        with client.stream("GET", "/api/stream") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    seen.setdefault(name, []).append(json.loads(line[6:]))
                if "mesh" in seen:
                    break
    hello = seen["hello"][0]
    assert isinstance(hello, dict) and hello["role"] == "admin" and hello["since"] == 0
    events = seen["event"]
    assert any(
        isinstance(event, dict)
        and event["kind"] == "policy_change"
        and event["override"]["state"] == "FORCED_OPEN"
        for event in events
    )
    mesh = seen["mesh"][0]
    assert isinstance(mesh, dict) and mesh["groups"] == [] and mesh["revision"] == 1
    # The same mesh in one plain answer (the page's first paint), read-only as ListBreakers is.
    with _client(url, AGENT) as client:
        assert client.get("/api/mesh").json() == mesh
    with _client(url) as client:
        assert client.get("/api/mesh").status_code == 401


Certificate = tuple[Any, Any]  # tls_support.issue()'s (certificate, key)


def _tls_console(start: StartThread, ca: Certificate, **options: Any) -> ServerThread:
    """A control plane with tokens, TLS from a certificate `ca` issued, and its console."""
    server_pem = pem(issue("localhost", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH))
    return start(
        console_port=0,
        admin_token=ADMIN,
        tls_cert=server_pem.cert,
        tls_key=server_pem.key,
        **options,
    )


def test_the_console_serves_https_when_the_control_plane_has_tls(
    control_plane_thread: StartThread, tmp_path: Path
) -> None:
    ca = issue("console test CA", None, ca=True)
    server = _tls_console(control_plane_thread, ca)
    url = server.running.console_url
    assert url is not None and url.startswith("https://")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pem(ca).cert)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    with httpx.Client(base_url=url, verify=context, timeout=10.0) as client:
        answer = client.get("/api/session", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.json()["role"] == "admin"
    plain = url.replace("https", "http")
    with httpx.Client(base_url=plain, timeout=10.0) as client, pytest.raises(httpx.HTTPError):
        client.get("/api/session")


def test_with_mutual_tls_the_console_wants_a_client_certificate_too(
    control_plane_thread: StartThread, tmp_path: Path
) -> None:
    ca = issue("console test CA", None, ca=True)
    client_pem = pem(issue("operator", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    server = _tls_console(control_plane_thread, ca, tls_client_ca=pem(ca).cert)
    url = server.running.console_url
    assert url is not None
    for name, data in (("ca", pem(ca).cert), ("cert", client_pem.cert), ("key", client_pem.key)):
        (tmp_path / f"{name}.pem").write_bytes(data)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.check_hostname = False
    # Without a client certificate the handshake is refused.
    with (
        httpx.Client(base_url=url, verify=context, timeout=10.0) as client,
        pytest.raises(httpx.HTTPError),
    ):
        client.get("/api/session")
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with httpx.Client(base_url=url, verify=context, timeout=10.0) as client:
        answer = client.get("/api/session", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.json()["role"] == "admin"


def test_a_taken_console_port_is_an_error_naming_the_console(
    control_plane_thread: StartThread,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind the console to 127.0.0.1:{port}"):
            control_plane_thread(console_port=port)


def test_options_and_flags() -> None:
    with pytest.raises(ConfigError, match="console_host"):
        ServerOptions(console_port=0, console_host="0.0.0.0")
    with pytest.raises(ConfigError, match="console_port"):
        ServerOptions(console_port=70000)
    ServerOptions(console_port=0, console_host="0.0.0.0", insecure=True)
    args = build_parser().parse_args(
        ["control-plane", "--console-port", "8081", "--console-host", "127.0.0.2"]
    )
    assert (args.console_port, args.console_host) == (8081, "127.0.0.2")


def test_a_forced_method_expires_and_a_put_from_the_page_keeps_its_override(
    console: tuple[ServerThread, str],
) -> None:
    server, url = console
    with _client(url, ADMIN) as client:
        forced = client.post(
            "/api/force",
            json={"method": METHOD, "override": "open", "expires_in": 600, "reason": "<i>db</i>"},
        )
        assert forced.status_code == 200, forced.text
        policy_id = forced.json()["policy"]["document"]["id"]
        assert forced.json()["policy"]["override"]["reason"] == "<i>db</i>"
        entry = {"id": policy_id, "selector": {"method": METHOD}, "config": {"minimum_calls": "5"}}
        kept = client.post("/api/policies/put", json={"policy": entry})
        refused = client.post("/api/policies/put", json={"policy": {**entry, "override": "closed"}})
        bad_expiry = client.post(
            "/api/force", json={"method": METHOD, "override": "open", "expires_in": -1}
        )
        not_seconds = client.post(
            "/api/force", json={"method": METHOD, "override": "open", "expires_in": "soon"}
        )
    assert kept.status_code == 200, kept.text
    assert refused.status_code == 400 and "ForceState" in refused.json()["message"]
    assert bad_expiry.status_code == 400 and "duration" in bad_expiry.json()["message"]
    assert not_seconds.status_code == 400
    with grpc.insecure_channel(server.target) as channel:
        stored = pb_grpc.ControlPlaneStub(channel).ListPolicies(
            pb.ListPoliciesRequest(), metadata=bearer(ADMIN)
        )
    (policy,) = stored.policies
    assert policy.override == pb.OVERRIDE_FORCED_OPEN
    assert policy.override_reason == "<i>db</i>"
    assert policy.HasField("override_expires_at")
    assert policy.config.minimum_calls == 5


def test_pages_share_one_mesh_read_until_a_newer_event_or_its_age_runs_out() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    reads: list[int] = []

    async def read(context: HttpCallContext) -> MeshRead:
        reads.append(len(reads) + 1)
        return MeshRead(pb.ListBreakersResponse(revision=len(reads)), {}, sequence=5)

    try:
        context = HttpCallContext(None, "console:test")
        shared = MeshCache(read, loop, max_age=3600.0, timeout=10.0)
        first = shared.get(0, context)
        assert json.loads(first)["revision"] == 1
        assert shared.get(5, context) == first  # a page that saw up to event 5: the same read
        assert reads == [1]
        assert json.loads(shared.get(6, context))["revision"] == 2  # it saw a newer event
        aged = MeshCache(read, loop, max_age=0.0, timeout=10.0)
        aged.get(0, context)
        aged.get(0, context)
        assert reads == [1, 2, 3, 4]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_consoles_serving_thread_never_keeps_a_process_from_exiting(
    console: tuple[ServerThread, str],
) -> None:
    """A daemon thread: a process that ends without stopping its control plane still exits."""
    serving = [t for t in threading.enumerate() if t.name == "meshbreaker-console"]
    assert serving and all(thread.daemon for thread in serving)


def test_a_page_that_asks_while_a_read_is_out_takes_that_read() -> None:
    """Pages asking at once share one mesh read: the second waits for the first's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    reads: list[int] = []
    release = threading.Event()

    async def read(context: HttpCallContext) -> MeshRead:
        reads.append(len(reads) + 1)
        while not release.is_set():  # the first read is out until the test lets it answer
            await asyncio.sleep(0.01)
        return MeshRead(pb.ListBreakersResponse(revision=len(reads)), {}, sequence=5)

    cache = MeshCache(read, loop, max_age=3600.0, timeout=30.0)
    context = HttpCallContext(None, "console:test")
    answers: list[bytes] = []
    asking = threading.Event()

    def page() -> None:
        asking.set()
        answers.append(cache.get(0, context))

    pages = [threading.Thread(target=page, daemon=True) for _ in range(2)]
    try:
        pages[0].start()
        assert wait_until(lambda: reads == [1])
        asking.clear()
        pages[1].start()
        assert asking.wait(10)
        # Time for a second read to start, were the second page not waiting for the first's.
        wait_until(lambda: len(reads) > 1, timeout=1.0)
        release.set()
        for each in pages:
            each.join(30)
        assert reads == [1]
        assert len(answers) == 2 and answers[0] == answers[1]
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_connection_of_a_feed_closes_when_the_feed_ends(
    console: tuple[ServerThread, str],
) -> None:
    server, _ = console
    port = server.running.console_port
    assert port is not None
    host = f"127.0.0.1:{port}"
    stream = f"GET /api/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    # A request behind it on the same connection: the feed has no length, its end is the close.
    behind = f"GET /static/console.css HTTP/1.1\r\nHost: {host}\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall((stream + behind).encode())
        while b"event: mesh" not in received:
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
        server.stop()  # the feed ends
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"HTTP/1.1 ") == 1, received[-300:]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_the_console_refuses_tls_older_than_1_2(control_plane_thread: StartThread) -> None:
    server = _tls_console(control_plane_thread, issue("console test CA", None, ca=True))
    port = server.running.console_port
    assert port is not None
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would speak TLS 1.1...
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),  # ...the console does not
    ):
        old.wrap_socket(raw).close()
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname, modern.verify_mode = False, ssl.CERT_NONE
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        modern.wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_a_page_that_falls_behind_is_told_how_many_events_it_lost_and_gets_the_newest_1000(
    console: tuple[ServerThread, str], admin_stub: Callable[..., pb_grpc.ControlPlaneStub]
) -> None:
    """A stalled page's feed keeps its newest 1,000 events, drops the older ones and says so."""
    server, _ = console
    port = server.running.console_port
    assert port is not None
    name = "/bank.v1.S/" + "M" * 500  # long names: big events fill the socket buffers sooner
    # A page that stops reading holds up its feed once the socket buffers are full (the
    # sender's is at most tcp_wmem's maximum); then its queue of 1,000 events overflows.
    buffered = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 2**20
    reports = 2 * buffered // (len(name) * 1000) + 2
    with socket.socket() as page:
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        page.settimeout(30)
        page.connect(("127.0.0.1", port))
        request = f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        page.sendall(f"{request}Authorization: Bearer {ADMIN}\r\n\r\n".encode())
        received = b""
        while b"event: mesh" not in received:
            chunk = page.recv(65536)
            assert chunk, received
            received += chunk
        stub = admin_stub(server.target, AGENT)
        closed, opened = pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN
        for sent in range(reports):
            log = [
                pb.TransitionRecord(sequence=sent * 1000 + n + 1, name=name,
                                    from_state=closed, to_state=opened)
                for n in range(1000)
            ]  # fmt: skip
            stub.ReportState(
                pb.ReportStateRequest(
                    instance_id="i1", service="tx", instance_key="k" * 32, transition_log=log
                )
            )
        newest = reports * 1000
        bus = server.running.servicer.events
        assert wait_until(lambda: bus.sequence >= newest)
        server.call(asyncio.sleep(0))  # the feed's pump (woken before this) has taken them all
        told, run, previous = False, 0, -1  # run: consecutive sequences ending at `previous`
        pending = received
        while previous < newest:
            *blocks, pending = pending.split(b"\n\n")
            for block in blocks:
                kind, _, data = block.partition(b"\ndata: ")
                if kind == b"event: lost":
                    told = told or json.loads(data)["events"] > 0
                elif kind == b"event: event":
                    sequence = json.loads(data)["sequence"]
                    run = run + 1 if sequence == previous + 1 else 1
                    previous = sequence
            if previous < newest:
                chunk = page.recv(1 << 20)
                assert chunk, pending[-300:]
                pending += chunk
    # The events after the gap are the ones the feed's queue held: the newest 1,000.
    assert told and run == 1000


def test_a_page_gets_the_mesh_after_each_burst_of_events_not_only_on_the_refresh(
    control_plane_thread: StartThread, admin_stub: Callable[..., pb_grpc.ControlPlaneStub]
) -> None:
    server = control_plane_thread()
    # A console whose refresh never comes within the test: every mesh after the first is one
    # sent because events came.
    console = ConsoleServer(
        server.running.servicer, TokenAuthenticator(), "127.0.0.1", 0, refresh=3600.0
    )

    async def start() -> None:
        console.start()

    server.call(start())
    try:
        meshes = 0
        with (
            httpx.Client(base_url=console.url, timeout=30.0) as client,
            client.stream("GET", "/api/stream") as stream,
        ):
            for line in stream.iter_lines():
                if line != "event: mesh":
                    continue
                meshes += 1
                if meshes == 2:
                    break
                forced = pb.ForceStateRequest(
                    selector=pb.Selector(method=METHOD), override=pb.OVERRIDE_FORCED_OPEN
                )
                admin_stub(server.target).ForceState(forced, timeout=10)
        assert meshes == 2
    finally:
        server.call(console.stop())


def test_at_most_32_pages_hold_a_feed_at_once(console: tuple[ServerThread, str]) -> None:
    server, _ = console
    port = server.running.console_port
    assert port is not None
    request = (
        f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {ADMIN}\r\n\r\n"
    ).encode()

    def open_page() -> tuple[socket.socket, bytes]:
        page = socket.create_connection(("127.0.0.1", port), timeout=30)
        page.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = page.recv(4096)
            assert chunk, head
            head += chunk
        return page, head

    pages = []
    try:
        for _ in range(32):
            page, head = open_page()
            pages.append(page)
            assert head.startswith(b"HTTP/1.1 200 "), head
        page, head = open_page()
        pages.append(page)
        assert head.startswith(b"HTTP/1.1 413 "), head  # RESOURCE_EXHAUSTED
    finally:
        for page in pages:
            page.close()


def test_at_most_64_connections_at_once_the_next_is_closed_not_queued(
    console: tuple[ServerThread, str],
) -> None:
    server, _ = console
    port = server.running.console_port
    assert port is not None
    request = f"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def answer(connection: socket.socket) -> bytes:
        """What the console sends back to `request` on `connection` (b"": closed)."""
        try:
            connection.sendall(request)
            return connection.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            return b""

    # Idle connections (no request yet) each hold a slot; accepted in order, before the next.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(64)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as over:
            assert answer(over) == b""
        assert answer(idle[-1]).startswith(b"HTTP/1.1 401 ")  # an idle one is served
    finally:
        for connection in idle:
            connection.close()

    def served() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as again:
            return answer(again).startswith(b"HTTP/1.1 401 ")

    assert wait_until(served)  # the slots are given back
