"""Pure Stratum V2: the Noise NX transport (sans-IO handshake and encrypted framing), the binary message codec, the
pool's authority key and server certificates. Bytes in, bytes out: no socket, no gevent.

Modules: `errors` (one base exception, `Sv2Error`), `crypto` (libsecp256k1 through coincurve: ElligatorSwift, the
BIP324 x-only ECDH, BIP340 Schnorr), `keys` (authority key file, base58check encodings SRI and the firmware use),
`certificate` (the signed SIGNATURE_NOISE_MESSAGE, the server identity and its renewal), `noise` (cipher state,
initiator and responder state machines), `framing` (the encrypted frame stream), `codec` (data types and messages).
"""
