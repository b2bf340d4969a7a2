"""The miner's side: a Stratum V1 client library, the `client` command, a CPU miner and client-side mining; the Stratum
V2 client is `gstratum.client.sv2` (library), `sv2work` (mining) and `sv2cli` (`client --protocol v2`)."""
from gstratum.client.stratum import (ClientState, ProtocolViolation, StratumClient, StratumRejected, Subscription,
                                     parse_url, validate_notify, validate_subscribe_result)

__all__ = ["ClientState", "ProtocolViolation", "StratumClient", "StratumRejected", "Subscription", "parse_url",
           "validate_notify", "validate_subscribe_result"]
