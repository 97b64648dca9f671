"""meshbreaker as an xDS server: the cluster registry, policy mapping, ADS, bootstrap files.

`model`, `mapping` and `bootstrap` need nothing beyond meshbreaker; `resources`, `ads` and
`server` need the envoy protos of the `xds` extra (xds-protos).
"""
