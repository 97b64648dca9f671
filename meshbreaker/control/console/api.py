"""The console's operations, each run on the server's event loop through the gRPC handlers.

Reads and writes are made by the servicer's own RPC handlers (see `bridge`); policies travel in
the policy file format of `meshbreaker policy list --json` / `policy put --file`, parsed by the
same code as the CLI's, so a message the page shows is the one the command line would print.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from meshbreaker.cli import arg_types
from meshbreaker.cli.explain import explanation_json, reported_configs
from meshbreaker.cli.policy_json import policy_document, policy_message
from meshbreaker.config import SCHEMA, BreakerConfig
from meshbreaker.control import convert
from meshbreaker.control.auth import Role, TokenAuthenticator
from meshbreaker.control.console import form, views
from meshbreaker.control.console.bridge import HttpCallContext, authorize, call
from meshbreaker.control.console.history import CallHistory
from meshbreaker.control.layers import PROCESS_DEFAULT, describe_value, explain
from meshbreaker.control.servicer import ControlPlaneServicer
from meshbreaker.control.validate import Refused
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb

# What a page asks for at once when it (re)connects: the most recent events kept.
RECENT_EVENTS = 200


@dataclass(frozen=True)
class MeshRead:
    """One read of the mesh for the page: the breakers, their call history, the newest event."""

    response: pb.ListBreakersResponse
    series: dict[tuple[str, str], dict[str, Any]]
    sequence: int


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is not None and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: must be a {kind.__name__}")
    return value


def _expected(body: dict[str, Any]) -> dict[str, Any]:
    """The request's compare-and-set revision, as keyword arguments of the proto request."""
    expected = _field(body, "expected_revision", int)
    return {} if expected is None else {"expected_revision": expected}


def _invalid(error: ConfigError) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class ConsoleApi:
    """What the console can ask of the control plane; every method runs on the server's loop."""

    def __init__(
        self,
        servicer: ControlPlaneServicer,
        authenticator: TokenAuthenticator,
        history: CallHistory,
    ) -> None:
        self._servicer = servicer
        self._authenticator = authenticator
        self.history = history

    async def session(self, context: HttpCallContext) -> dict[str, Any]:
        """Who the token belongs to and what it may do (refused like a read without one)."""
        authorize(self._authenticator, "ListBreakers", context)
        if not self._authenticator.enabled:
            role = "open"
        else:
            found = self._authenticator.role(context.invocation_metadata())
            role = "anonymous" if found is None else found.value
        return {
            "role": role,
            "can_write": role in ("open", Role.ADMIN.value),
            "revision": self._servicer.revision,
        }

    async def schema(self, context: HttpCallContext) -> dict[str, Any]:
        """The policy form's sections and inputs (`form.schema`), as a read of policies."""
        authorize(self._authenticator, "ListPolicies", context)
        return form.schema()

    async def mesh(self, context: HttpCallContext) -> MeshRead:
        """Every breaker with each instance's view, every live instance, the call history."""
        sequence = self._servicer.events.sequence
        response = await call(
            self._authenticator,
            self._servicer.ListBreakers,
            pb.ListBreakersRequest(include_instances=True),
            context,
        )
        return MeshRead(response, self.history.series(), sequence)

    async def mesh_view(self, context: HttpCallContext) -> dict[str, Any]:
        """The mesh as the feed pushes it, in one plain answer: a page's first paint (and so the
        picture a headless Chromium `--screenshot` takes, which waits for fetches, not streams)."""
        read = await self.mesh(context)
        return views.mesh(read.response, read.series)

    async def events(self, context: HttpCallContext, since: int = 0) -> list[dict[str, Any]]:
        """The most recent events kept, oldest first; only those after `since` when given."""
        response = await call(
            self._authenticator,
            self._servicer.ListEvents,
            pb.ListEventsRequest(limit=RECENT_EVENTS),
            context,
        )
        return [views.event(event) for event in response.events if event.sequence > since]

    async def policies(self, context: HttpCallContext) -> dict[str, Any]:
        """Every policy as a policy file entry, with its config fields as the form spells them."""
        response = await call(
            self._authenticator, self._servicer.ListPolicies, pb.ListPoliciesRequest(), context
        )
        return {
            "revision": response.revision,
            "policies": [_policy_entry(policy) for policy in response.policies],
        }

    async def put_policy(self, context: HttpCallContext, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace one policy (a policy file entry) through PutPolicy."""
        authorize(self._authenticator, "PutPolicy", context)
        entry = _field(body, "policy", dict)
        if entry is None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "policy: a policy is needed")
        try:
            policy = policy_message(entry)
        except ConfigError as error:
            raise _invalid(error) from None
        if "override" in entry:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "override: set overrides with ForceState (the force form); a put keeps them",
            )
        stored = await call(
            self._authenticator, self._servicer.ListPolicies, pb.ListPoliciesRequest(), context
        )
        _keep_override(policy, stored.policies)
        request = pb.PutPolicyRequest(policies=[policy], **_expected(body))
        response = await call(self._authenticator, self._servicer.PutPolicy, request, context)
        return {"revision": response.revision, "policy": _policy_entry(response.policies[0])}

    async def delete_policy(self, context: HttpCallContext, body: dict[str, Any]) -> dict[str, Any]:
        """Delete one policy through DeletePolicy."""
        request = pb.DeletePolicyRequest(id=_field(body, "id", str, ""), **_expected(body))
        response = await call(self._authenticator, self._servicer.DeletePolicy, request, context)
        return {"revision": response.revision}

    async def force(self, context: HttpCallContext, body: dict[str, Any]) -> dict[str, Any]:
        """Force a method (or service) open or closed, or back to auto, through ForceState."""
        authorize(self._authenticator, "ForceState", context)
        word = _field(body, "override", str, "")
        try:
            override = arg_types.forced_state(word)
        except argparse.ArgumentTypeError as error:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"override: {error}") from None
        selector = pb.Selector(
            caller=_field(body, "caller", str, ""),
            service=_field(body, "service", str, ""),
            method=_field(body, "method", str, ""),
        )
        request = pb.ForceStateRequest(
            selector=selector, override=convert.override_to_proto(override), **_expected(body)
        )
        request.reason = _field(body, "reason", str, "")
        expires_in = body.get("expires_in")
        if expires_in is not None:
            if (
                isinstance(expires_in, bool)
                or not isinstance(expires_in, (int, float))
                or not math.isfinite(expires_in)
            ):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "expires_in: must be seconds")
            # Its range (> 0) is the handler's to check, as for any ForceState request.
            request.duration.FromNanoseconds(int(expires_in * 1e9))
        response = await call(self._authenticator, self._servicer.ForceState, request, context)
        policy = _policy_entry(response.policy) if response.HasField("policy") else None
        return {"revision": response.revision, "policy": policy}

    async def explain(self, context: HttpCallContext, caller: str, method: str) -> dict[str, Any]:
        """A breaker's layered config, field by field, and the config each instance reports."""
        try:
            caller = convert.check_caller(caller, "caller", required=True)
            method = convert.check_method(method, "method")
        except ConfigError as error:
            raise _invalid(error) from None
        if not method:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "method: must not be empty")
        policies = await call(
            self._authenticator,
            self._servicer.ListPolicies,
            pb.ListPoliciesRequest(caller=caller),
            context,
        )
        breakers = await call(
            self._authenticator,
            self._servicer.ListBreakers,
            pb.ListBreakersRequest(service=caller, method=method, include_instances=True),
            context,
        )
        return _explanations(caller, method, policies, breakers)


def _keep_override(policy: pb.Policy, stored: Iterable[pb.Policy]) -> None:
    """Give `policy` the override (with its expiry and reason) of the stored one, if any.

    The form edits everything else of a policy; its override belongs to ForceState, so a put
    from the page must not lift it, nor make an expiring one permanent.
    """
    for existing in stored:
        if existing.id != policy.id:
            continue
        if existing.HasField("fleet"):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"id: {policy.id!r} holds a fleet decision, which the control plane's decider"
                " owns; it goes when the decision ends",
            )
        form.keep_owned(policy, existing)
        return


def _policy_entry(policy: pb.Policy) -> dict[str, Any]:
    """A policy file entry; the text of each form input it sets, by path, and the form sections
    it holds (`form.values`); and its override as the page shows it."""
    texts, sections = form.values(policy)
    return {
        "document": policy_document(policy),
        "form": texts,
        "sections": sections,
        "override": views.override(policy),
    }


def _explanations(
    caller: str,
    method: str,
    policies: pb.ListPoliciesResponse,
    breakers: pb.ListBreakersResponse,
) -> dict[str, Any]:
    """The layered config over the library's defaults, then per instance over what it reports.

    A field no policy sets keeps the process's own default, which an instance's reported
    effective config holds; a reported value that differs from the layered one means that
    instance has not applied the newest policies (or refused them).
    """
    result: dict[str, Any] = {
        "caller": caller,
        "method": method,
        "revision": policies.revision,
        "fields": list(SCHEMA),
        "instances": [],
    }
    try:
        layered = explain(caller, method, policies.policies, BreakerConfig(), "library default")
    except ConfigError as error:
        result["error"] = f"the policies for {caller} do not resolve: {error}"
        return result
    result["layered"] = explanation_json(layered, policies.revision)
    for name, item, reported in reported_configs(breakers, method):
        try:
            expected = explain(caller, method, policies.policies, reported, PROCESS_DEFAULT)
        except ConfigError:
            continue  # the policies do not resolve over what this instance reports
        values = {field: describe_value(getattr(reported, field)) for field in SCHEMA}
        result["instances"].append(
            {
                "instance": item.instance_id,
                "breaker": name,
                "applied_revision": item.applied_revision,
                "config": values,
                "differs": [
                    field
                    for field in SCHEMA
                    if getattr(expected.config, field) != getattr(reported, field)
                ],
            }
        )
    return result
