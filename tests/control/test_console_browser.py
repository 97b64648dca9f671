"""The web console in a real browser: headless Chromium against a real control plane and agent.

Each test drives the page as an operator would and checks what reached the agent's breakers.
The `browser` fixture (tests/browser_support.py) skips them where no Chromium is installed.
Deadlines are generous and polled (the page usually turns a breaker red in about 0.2 s).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect

from meshbreaker import BreakerConfig, BreakerRegistry, State
from meshbreaker.control.agent import MeshAgent
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc
from tests.control.conftest import bearer
from tests.server_support import ServerThread, wait_until

ADMIN, AGENT = "admin-secret", "agent-secret"
METHOD = "/bank.v1.AccountService/GetBalance"
MALICIOUS = "<img src=x onerror=alert(1)>"
DEADLINE_MS = 10_000  # polled: the issue asks for 2 s; a loaded machine gets room
TOKEN_KEY = "meshbreaker.console.token"


@dataclass
class Mesh:
    server: ServerThread
    url: str
    registry: BreakerRegistry
    agent: MeshAgent


@pytest.fixture
def mesh(control_plane_thread: Callable[..., ServerThread]) -> Iterator[Mesh]:
    """A control plane with tokens and the console, and one agent of "transaction"."""
    server = control_plane_thread(console_port=0, admin_token=ADMIN, agent_token=AGENT)
    url = server.running.console_url
    assert url is not None
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=2))
    agent = MeshAgent(server.target, "transaction", registry, token=AGENT, report_interval=0.5)
    agent.start()
    registry.get(METHOD).acquire().success(0.01)
    assert wait_until(lambda: agent.connected, timeout=5.0)
    try:
        yield Mesh(server, url, registry, agent)
    finally:
        agent.stop()


@dataclass
class Watched:
    page: Page
    errors: list[str]
    dialogs: list[str]


def _open(browser: Browser, url: str, token: str | None) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    if token is not None:
        context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {token!r})")
    page = context.new_page()
    watched = Watched(page, [], [])

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.on("dialog", on_dialog)
    page.goto(url)
    try:
        yield watched
    finally:
        context.close()


@pytest.fixture
def admin_page(browser: Browser, mesh: Mesh) -> Iterator[Watched]:
    yield from _open(browser, mesh.url, ADMIN)


@pytest.fixture
def agent_page(browser: Browser, mesh: Mesh) -> Iterator[Watched]:
    yield from _open(browser, mesh.url, AGENT)


def _row(page: Page, name: str) -> str:
    return f'tr.breaker[data-name="{name}"]'


def test_the_page_loads_and_shows_the_mesh(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    expect(page).to_have_title("meshbreaker console")
    expect(page.locator("#link")).to_have_text("live", timeout=DEADLINE_MS)
    expect(page.locator("#role")).to_have_text("admin")
    row = page.locator(_row(page, METHOD))
    expect(row).to_have_attribute("data-state", "CLOSED", timeout=DEADLINE_MS)
    expect(row.locator(".chip")).to_have_attribute("data-instance", mesh.agent.instance_id)
    expect(page.locator(f'#instances tr[data-instance="{mesh.agent.instance_id}"]')).to_be_visible()
    # A CSP violation, a script error or a missing file would each show here.
    assert admin_page.errors == []


def test_a_breaker_that_opens_turns_red_without_a_reload(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    row = page.locator(_row(page, METHOD))
    expect(row).to_have_attribute("data-state", "CLOSED", timeout=DEADLINE_MS)
    page.evaluate("window.loadedOnce = true")
    breaker = mesh.registry.get(METHOD)
    breaker.acquire().failure(0.01)
    breaker.acquire().failure(0.01)
    assert breaker.state is State.OPEN
    expect(row).to_have_attribute("data-state", "OPEN", timeout=DEADLINE_MS)
    chip = row.locator(".chip")
    expect(chip).to_have_css("background-color", "rgb(214, 45, 32)")  # --open
    expect(page.locator("#events .event.to-OPEN").first).to_contain_text(METHOD)
    assert page.evaluate("window.loadedOnce") is True  # the same page: no reload happened


def test_forcing_a_method_from_the_page_reaches_the_agent(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    form = page.locator("#force-form")
    form.locator('input[name="expires_in"]').fill("600")
    form.locator('input[name="reason"]').fill("<b>db failover</b>")
    row = page.locator(_row(page, METHOD))
    row.locator("button.force-open").click()
    assert wait_until(lambda: mesh.registry.get(METHOD).state is State.FORCED_OPEN, 5.0)
    expect(form.locator("output")).to_contain_text("forced open for 600 s")
    expect(row).to_have_attribute("data-state", "FORCED_OPEN", timeout=DEADLINE_MS)
    override = page.locator("#overrides tbody tr")
    expect(override).to_contain_text("<b>db failover</b>", timeout=DEADLINE_MS)
    expect(override).to_contain_text(re.compile(r"(9m5\ds|10m00s)"))  # counting down from 600 s
    # Lifted from the list of overrides in force.
    override.locator("button.force-auto").click()
    assert wait_until(lambda: mesh.registry.get(METHOD).state is State.CLOSED, 5.0)
    expect(page.locator("#overrides")).to_be_hidden(timeout=DEADLINE_MS)


def test_a_malicious_breaker_name_is_shown_as_text(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    mesh.registry.get(MALICIOUS).acquire().success(0.01)
    row = page.locator(_row(page, MALICIOUS))
    expect(row.locator("td.name")).to_have_text(MALICIOUS, timeout=DEADLINE_MS)
    expect(page.locator('#policies tr[data-policy="markup"]')).to_have_count(0)
    # A description with markup, sent through the gRPC API, reaches the events list as text.
    with grpc.insecure_channel(mesh.server.target) as channel:
        pb_grpc.ControlPlaneStub(channel).PutPolicy(
            pb.PutPolicyRequest(
                policies=[
                    pb.Policy(
                        id="markup",
                        selector=pb.Selector(service="bank.v1.AccountService"),
                        description="<script>alert(2)</script>" + MALICIOUS,
                    )
                ]
            ),
            metadata=bearer(ADMIN),
        )
    expect(page.locator("#events .policy_change").first).to_contain_text(
        "<script>alert(2)</script>" + MALICIOUS, timeout=DEADLINE_MS
    )
    expect(page.locator('#policies tr[data-policy="markup"]')).to_contain_text("<script>")
    assert page.locator("main img, main script").count() == 0
    assert admin_page.dialogs == []
    assert admin_page.errors == []


def test_the_read_only_view_refuses_writes(agent_page: Watched, mesh: Mesh) -> None:
    page = agent_page.page
    expect(page.locator("#role")).to_have_text("read-only (agent token)", timeout=DEADLINE_MS)
    row = page.locator(_row(page, METHOD))
    expect(row).to_be_visible(timeout=DEADLINE_MS)
    assert row.locator("button.force-open").count() == 0
    expect(page.locator('#force-form button[type="submit"]')).to_be_disabled()
    expect(page.locator('#policy-form button[type="submit"]')).to_be_disabled()
    expect(page.locator("#write-note")).to_contain_text("Read-only")
    # Even a page changed by hand cannot write with this token: the server refuses.
    answer = page.evaluate(
        """async (method) => {
            const token = sessionStorage.getItem("meshbreaker.console.token");
            const response = await fetch("/api/force", {
                method: "POST",
                headers: {"Content-Type": "application/json", Authorization: `Bearer ${token}`},
                body: JSON.stringify({method, override: "open"}),
            });
            return [response.status, await response.json()];
        }""",
        METHOD,
    )
    assert answer == [
        403,
        {
            "code": "PERMISSION_DENIED",
            "message": "/meshbreaker.v1.ControlPlane/ForceState needs the admin token",
        },
    ]
    assert mesh.registry.get(METHOD).state is State.CLOSED


def test_without_a_token_the_page_asks_for_one(browser: Browser, mesh: Mesh) -> None:
    for watched in _open(browser, mesh.url, None):
        page = watched.page
        expect(page.locator("#link")).to_have_text("needs a token", timeout=DEADLINE_MS)
        expect(page.locator("#banner")).to_contain_text("missing or invalid token")
        assert page.locator("tr.breaker").count() == 0
        page.fill("#token", ADMIN)
        page.click("#token-form button[type=submit]")
        expect(page.locator(_row(page, METHOD))).to_be_visible(timeout=DEADLINE_MS)


def test_the_policy_form_shows_the_servers_own_message(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    form = page.locator("#policy-form")
    expect(form.locator('input[name="config.failure_rate_threshold"]')).to_be_visible(
        timeout=DEADLINE_MS
    )
    form.locator('input[name="id"]').fill("balance")
    form.locator('input[name="service"]').fill("bank.v1.Other")
    form.locator('input[name="method"]').fill(METHOD)
    form.locator('input[name="config.failure_rate_threshold"]').fill("0.3")
    form.locator('button[type="submit"]').click()
    expect(form.locator("output")).to_have_text(
        re.compile(r"^INVALID_ARGUMENT: policies\[0\]\.selector"), timeout=DEADLINE_MS
    )
    form.locator('input[name="service"]').fill("")
    form.locator('button[type="submit"]').click()
    expect(form.locator("output")).to_contain_text("put balance at revision", timeout=DEADLINE_MS)
    assert wait_until(
        lambda: mesh.registry.resolve(METHOD).failure_rate_threshold == 0.3, timeout=5.0
    )
    policy_row = page.locator('#policies tr[data-policy="balance"]')
    expect(policy_row).to_contain_text("failure_rate_threshold=0.3", timeout=DEADLINE_MS)
    # Explain: the layered value, and the same value in the instance's reported config.
    page.locator(_row(page, METHOD)).locator("button.explain").click()
    cell = page.locator('#explanation tr[data-field="failure_rate_threshold"] td')
    expect(cell.nth(1)).to_have_text("0.3", timeout=DEADLINE_MS)
    expect(cell.nth(2)).to_contain_text("balance")
    expect(cell.nth(3)).to_have_text("0.3", timeout=DEADLINE_MS)


def test_the_page_says_it_lost_the_control_plane_and_catches_up(
    admin_page: Watched, mesh: Mesh
) -> None:
    page = admin_page.page
    row = page.locator(_row(page, METHOD))
    expect(row).to_have_attribute("data-state", "CLOSED", timeout=DEADLINE_MS)
    # The console comes back on the same port, as a restarted control plane's would.
    mesh.server.options["console_port"] = mesh.server.running.console_port
    mesh.server.stop()
    expect(page.locator("#link")).to_have_text("lost the control plane", timeout=DEADLINE_MS)
    expect(page.locator("#banner")).to_contain_text("Lost the control plane")
    breaker = mesh.registry.get(METHOD)
    breaker.acquire().failure(0.01)
    breaker.acquire().failure(0.01)  # opens while nobody hears of it
    mesh.server.start()
    expect(page.locator("#link")).to_have_text("live", timeout=DEADLINE_MS)
    expect(row).to_have_attribute("data-state", "OPEN", timeout=DEADLINE_MS)
    expect(page.locator("#banner")).to_contain_text("Back in touch")


def test_a_policy_is_edited_and_deleted_from_the_page(admin_page: Watched, mesh: Mesh) -> None:
    page = admin_page.page
    with grpc.insecure_channel(mesh.server.target) as channel:
        pb_grpc.ControlPlaneStub(channel).PutPolicy(
            pb.PutPolicyRequest(
                policies=[
                    pb.Policy(
                        id="tight",
                        selector=pb.Selector(method=METHOD),
                        config=pb.BreakerConfig(failure_rate_threshold=0.3),
                    )
                ]
            ),
            metadata=bearer(ADMIN),
        )
    assert wait_until(lambda: mesh.registry.resolve(METHOD).failure_rate_threshold == 0.3, 5.0)
    page.locator('#policies tr[data-policy="tight"] button').click(timeout=DEADLINE_MS)
    form = page.locator("#policy-form")
    expect(form.locator('input[name="method"]')).to_have_value(METHOD)
    threshold = form.locator('input[name="config.failure_rate_threshold"]')
    expect(threshold).to_have_value("0.3")
    threshold.fill("0.4")
    form.locator('button[type="submit"]').click()
    expect(form.locator("output")).to_contain_text("put tight at revision", timeout=DEADLINE_MS)
    assert wait_until(lambda: mesh.registry.resolve(METHOD).failure_rate_threshold == 0.4, 5.0)
    form.locator("#policy-delete").click()
    expect(form.locator("output")).to_contain_text("deleted tight", timeout=DEADLINE_MS)
    expect(page.locator('#policies tr[data-policy="tight"]')).to_have_count(0, timeout=DEADLINE_MS)
    assert wait_until(lambda: mesh.registry.resolve(METHOD).failure_rate_threshold == 0.5, 5.0)
