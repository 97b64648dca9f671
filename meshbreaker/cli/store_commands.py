"""`store adopt`: the operator's word that lets agents holding another store's policies switch."""

from __future__ import annotations

import argparse

from meshbreaker.cli.client import Client
from meshbreaker.live.text import clean
from meshbreaker.v1 import control_plane_pb2 as pb


def store_adopt(args: argparse.Namespace) -> int:
    """`store adopt STORE_ID`: agents holding STORE_ID's policies take this control plane's."""
    with Client(args) as client:
        response = client.call(client.stub.AdoptStore, pb.AdoptStoreRequest(store_id=args.store_id))
    print(
        f"agents holding store {clean(args.store_id)} now take store "
        f"{clean(response.store_id)}'s policies (held until the control plane restarts)"
    )
    return 0
