"""The xDS clients of a control plane as a table: for `status`, `status --watch`, `xds clients`."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from meshbreaker.live.table import Column, new_table
from meshbreaker.live.text import clean
from meshbreaker.v1 import xds_pb2

_XDS_COLUMNS = (
    Column("XDS CLIENT", cut="end", weight=2),
    Column("CALLER", cut="end"),
    Column("TYPE", min_width=8),
    Column("NAMES", cut="end"),
    Column("ACKED", min_width=5),
    Column("NACK", cut="end", weight=3),
)


def xds_clients_view(response: xds_pb2.ListXdsClientsResponse, width: int | None) -> Group:
    """One row per (xDS client, resource type): what it subscribes to, ACKed, and any NACK."""
    rows: list[list[str | Text]] = []
    for status in response.clients:
        for resource in status.resources:
            nack = f"{resource.nacked_version}: {resource.error}" if resource.nacked_version else ""
            rows.append(
                [
                    status.node_id,
                    status.node_cluster or "-",
                    resource.type,
                    ",".join(resource.names) or "*",
                    resource.acked_version or "-",
                    Text(clean(nack), style="yellow"),
                ]
            )
    nacking = sum(any(r.nacked_version for r in c.resources) for c in response.clients)
    summary = f"{len(response.clients)} xDS client(s)" + (f", {nacking} NACKing" if nacking else "")
    return Group(new_table(_XDS_COLUMNS, rows, width), Text(summary))
