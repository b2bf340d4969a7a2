"""The authority key: file format, creation, and the public key string miners pin, checked against the spec's test
vector (4.7.1) and SRI's key_utils test keys."""
from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gstratum.protocol.sv2 import crypto, keys
from gstratum.protocol.sv2.errors import KeyFormatError, Sv2Error

# Spec 4.7.1.
SPEC_RAW_PUBLIC_KEY = bytes([118, 99, 112, 0, 151, 156, 28, 17, 175, 12, 48, 11, 205, 140, 127, 228, 134, 16, 252,
                             233, 185, 193, 30, 61, 174, 227, 90, 224, 176, 138, 116, 85])
SPEC_PUBLIC_KEY = "9bXiEd8boQVhq7WddEcERUL5tyyJVFYdU8th3HfbNXK3Yw6GRXh"
# SRI key_utils' unit test (secret in SRI's file format, and the public key it derives).
SRI_SECRET = "zmBEmPhqo3A92FkiLVvyCz6htc3e53ph3ZbD4ASqGaLjwnFLi"
SRI_PUBLIC = "9bDuixKmZqAJnrmP746n8zU1wyAQRrus7th9dxnkPg6RzQvCnan"
# SRI codec_sv2's test authority pair.
SRI_SECRET_2 = "mkDLTBBRxdBv998612qipDYoTK3YUrqLe8uWw7gu3iXbSrn2n"
SRI_PUBLIC_2 = "9auqWEzQDVyd2oe1JVGFLMLHZtCo2FFqZwtKA5gd9xbuEu7PH72"


def test_spec_public_key_vector():
    assert keys.encode_authority_public_key(SPEC_RAW_PUBLIC_KEY) == SPEC_PUBLIC_KEY
    assert keys.decode_authority_public_key(SPEC_PUBLIC_KEY) == SPEC_RAW_PUBLIC_KEY


@pytest.mark.parametrize("secret,public", [(SRI_SECRET, SRI_PUBLIC), (SRI_SECRET_2, SRI_PUBLIC_2)])
def test_sri_secret_format_and_derived_public_key(secret, public):
    raw = keys.parse_authority_secret(secret)
    assert keys.authority_public_key_string(raw) == public
    assert keys.encode_sri_secret_key(raw) == secret
    assert keys.decode_authority_public_key(public) == crypto.xonly_public_key(raw)


def test_public_key_string_layout_is_version_1_little_endian_then_x_only():
    payload = keys.base58check_decode(SRI_PUBLIC)
    assert payload[:2] == b"\x01\x00" and len(payload) == 34


@pytest.mark.parametrize("text,reason", [
    ("9bDuixKmZqAJnrmP746n8zU1wyAQRrus7th9dxnkPg6RzQvCnam", "checksum"),       # SRI: swapped last character
    ("2myPhc5vkPzuC5FXNK5tee79WmP7uoLh55SxezoF8iqwF3E3rnPY", "version 12"),  # SRI: version 12
    ("2wmHTKZkLg2QzXyEXGMBXzKP7JXDUt8yy9SA5hoQwERc92qR6c", "34 bytes"),      # SRI: one byte missing
    ("0OIl", "character"),
])
def test_bad_public_keys_are_refused(text, reason):
    with pytest.raises(KeyFormatError, match=reason):
        keys.decode_authority_public_key(text)


def test_secret_file_formats(tmp_path):
    raw = keys.parse_authority_secret(SRI_SECRET)
    hex_file = tmp_path / "hex.key"
    hex_file.write_text(raw.hex().upper() + "\n")
    sri_file = tmp_path / "sri.key"
    sri_file.write_text(f'"{SRI_SECRET}"\n')
    assert keys.read_authority_key(str(hex_file)) == raw
    assert keys.read_authority_key(str(sri_file)) == raw


@pytest.mark.parametrize("content", ["", "00" * 32, "ff" * 32, "zz" * 32, "abc", "\u00e9" * 10, "1" * 300,
                                     keys.base58check_encode(b"\x01" * 31)])
def test_a_bad_key_file_names_itself(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(KeyFormatError, match="bad.key"):
        keys.read_authority_key(str(path))


def test_created_with_mode_0600_once_then_read(tmp_path):
    path = str(tmp_path / "authority.key")
    secret, created = keys.load_or_create_authority_key(path)
    assert created
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path).read() == secret.hex() + "\n"
    again, created_again = keys.load_or_create_authority_key(path)
    assert (again, created_again) == (secret, False)


def test_an_existing_file_is_never_overwritten(tmp_path):
    path = tmp_path / "authority.key"
    path.write_text(SRI_SECRET)
    secret, created = keys.load_or_create_authority_key(str(path))
    assert not created and secret == keys.parse_authority_secret(SRI_SECRET)
    assert path.read_text() == SRI_SECRET


def test_a_missing_directory_is_an_os_error_not_a_new_key(tmp_path):
    with pytest.raises(FileNotFoundError):
        keys.load_or_create_authority_key(str(tmp_path / "missing" / "authority.key"))


@given(st.binary(min_size=0, max_size=40))
def test_base58check_round_trip(payload):
    assert keys.base58check_decode(keys.base58check_encode(payload)) == payload


@given(st.text(max_size=80))
def test_parsing_any_text_raises_only_key_format_errors(text):
    try:
        secret = keys.parse_authority_secret(text)
    except Sv2Error as exc:
        assert isinstance(exc, KeyFormatError)
    else:
        assert crypto.is_valid_secret(secret)
