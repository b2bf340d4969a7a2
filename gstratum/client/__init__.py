"""The miner's side: a Stratum V1 client library, the `client` command, a CPU miner and client-side mining."""
from gstratum.client.stratum import (ClientState, ProtocolViolation, StratumClient, StratumRejected, Subscription,
                                     parse_url, validate_notify, validate_subscribe_result)

__all__ = ["ClientState", "ProtocolViolation", "StratumClient", "StratumRejected", "Subscription", "parse_url",
           "validate_notify", "validate_subscribe_result"]
