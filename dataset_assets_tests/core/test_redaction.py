"""Secrets are redacted from URLs, free text and log records."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import boto3
import pytest

from dataset_assets.core.manifest import ManifestEntry
from dataset_assets.core.redaction import get_logger, redact_text, redact_url
from dataset_assets.core.s3 import S3Destination, S3Url, make_s3_client
from dataset_assets.core.storage import StorageError
from dataset_assets.core.transfer import TransferError, TransferSettings, download_entries
from dataset_assets_tests import s3_fixtures
from dataset_assets_tests.plain_server import PlainServer
from dataset_assets_tests.s3_fixtures import S3Bucket

moto_endpoint = s3_fixtures.moto_endpoint
moto_client = s3_fixtures.moto_client
s3_bucket = s3_fixtures.s3_bucket


def test_redact_url_drops_query_and_credentials() -> None:
    assert redact_url("https://user:pw@h:8/p/f.tar?Expires=1&Signature=abcdef") == "https://h:8/p/f.tar?<redacted>"
    assert redact_url("https://h/p/f.tar") == "https://h/p/f.tar"


def test_redact_text_rewrites_every_url_and_token_assignment() -> None:
    text = ("GET https://a/x?sig=AAAA1111 failed; retry http://b/y?token=BBBB2222 "
            "aws_secret_access_key=CCCC3333DDDD token: EEEE4444FFFF")
    redacted = redact_text(text)
    for secret in ("AAAA1111", "BBBB2222", "CCCC3333", "EEEE4444"):
        assert secret not in redacted
    assert "https://a/x?<redacted>" in redacted


def test_secret_assignments_in_dict_reprs_json_and_prefixed_names_are_redacted() -> None:
    texts = [repr({"aws_secret_access_key": "CCCC3333DDDD"}), json.dumps({"token": "EEEE4444FFFF"}),
             "access_token=GGGG5555HHHH client_secret: IIII6666JJJJ"]
    redacted = [redact_text(text) for text in texts]
    for secret in ("CCCC3333", "EEEE4444", "GGGG5555", "IIII6666"):
        assert not any(secret in text for text in redacted)
    assert redacted[0] == "{'aws_secret_access_key': '<redacted>'}"


def test_logger_from_get_logger_redacts_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = get_logger("dataset_assets.test_redaction")
    with caplog.at_level(logging.INFO, logger="dataset_assets.test_redaction"):
        logger.info("fetching %s", "https://h/f?Signature=SECRETSECRET")
    assert "SECRETSECRET" not in caplog.text
    assert "https://h/f?<redacted>" in caplog.text


def test_request_targets_logged_without_scheme_lose_their_query_but_other_text_keeps_question_marks() -> None:
    line = 'http://127.0.0.1:8 "GET /files/c/s/f.tar?Expires=17&Key-Pair-Id=KP4ABC HTTP/1.1" 403 12'
    assert redact_text(line) == 'http://127.0.0.1:8 "GET /files/c/s/f.tar?<redacted> HTTP/1.1" 403 12'
    assert redact_text("ratio 1/2?yes, path /a/b? done") == "ratio 1/2?yes, path /a/b? done"


def test_urllib3_request_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """urllib3 (our HTTP transport) logs each request target with its query at DEBUG."""
    logger = logging.getLogger("urllib3.connectionpool")
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        logger.debug('%s://%s:%s "%s %s %s" %s %s', "http", "h", 80, "GET", "/f.tar?Key-Pair-Id=KP4ABC", "HTTP/1.1",
                     200, 3)
    assert "KP4ABC" not in caplog.text and "/f.tar?<redacted>" in caplog.text


@pytest.mark.parametrize("run", ["x", "/", "a1"])
def test_redacting_text_with_long_runs_of_url_characters_takes_linear_time(run: str) -> None:
    """Errors show redact_text(repr(value)) of whatever a user file holds, say a 100 kB token in a manifest."""
    text = f"{run * 50_000} then 1https://user:pw@h/p?sig=abcdef and GET /q?Signature=abcdef"
    started = time.monotonic()
    redacted = redact_text(text)
    assert time.monotonic() - started < 1.0
    assert redacted.endswith(" then 1https://h/p?<redacted> and GET /q?<redacted>")


def test_s3_client_debug_logs_keep_credentials_and_signatures_out(
    s3_bucket: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore logs each signed request (headers, canonical request, signature) at DEBUG."""
    session = boto3.session.Session(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="SECRETKEY1234567",
                                    aws_session_token="SESSIONTOKEN1234567")
    client = session.client("s3", endpoint_url=s3_bucket.endpoint_url, region_name="us-east-1")
    with caplog.at_level(logging.DEBUG):
        client.put_object(Bucket=s3_bucket.name, Key="k", Body=b"data")

    assert "x-amz-security-token" in caplog.text.lower()
    assert "SESSIONTOKEN1234567" not in caplog.text and "SECRETKEY1234567" not in caplog.text
    assert "'Authorization': b'<redacted>'" in caplog.text  # SigV4's Signature= and all the rest of the value


@pytest.mark.parametrize("secret_part", ["user:pa(ss)word@", "user:it's-a-secret@"], ids=["paren", "quote"])
def test_url_credentials_holding_legal_sub_delimiters_never_reach_errors_or_logs(
    plain_server: PlainServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, secret_part: str
) -> None:
    """RFC 3986 allows `'()` unencoded in user info and queries; redaction must not stop at them."""
    base = plain_server.url("/missing.tar")
    with_password = base.replace("://", f"://{secret_part}", 1)
    entries = [ManifestEntry("cubercnn", "seq_000", "a.tar", with_password),
               ManifestEntry("cubercnn", "seq_001", "b.tar", f"{base}?Expires=4102444800&Signature=ab'cd(ef)SECRETSIG")]

    with caplog.at_level(logging.DEBUG), pytest.raises(TransferError) as raised:
        download_entries(entries, {"cubercnn": tmp_path}, TransferSettings(max_attempts=1))

    shown = f"{raised.value}\n{caplog.text}"
    assert "HTTP 404" in str(raised.value)
    for secret in ("ss)word", "-a-secret", "SECRETSIG", "ef)"):
        assert secret not in shown


def test_a_secret_value_starting_with_b_is_redacted_whole_and_bytes_reprs_still_are() -> None:
    """botocore's hex signatures start with `b` one time in 16; only `b'` or `b"` opens a bytes repr."""
    assert redact_text("Signature=b1e0c3d2a4f5") == "Signature=<redacted>"
    assert redact_text("{'X-Amz-Security-Token': b'bTOKEN123456'}") == "{'X-Amz-Security-Token': b'<redacted>'}"


def test_authorization_values_and_bearer_tokens_a_server_quotes_are_redacted() -> None:
    texts = ["rejected Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.SECRET1 (expired)",
             "{'Authorization': 'Basic dXNlcjpTRUNSRVQy', 'Accept': '*/*'}",
             '{"proxy-authorization": "Digest username=\\"u\\", response=\\"SECRET3\\""}',
             "invalid token in header: bearer SECRET4abcdef"]
    redacted = [redact_text(text) for text in texts]

    assert redacted[0] == "rejected Authorization: <redacted>"
    assert redacted[1] == "{'Authorization': '<redacted>', 'Accept': '*/*'}"
    assert redacted[3] == "invalid token in header: bearer <redacted>"
    for secret in ("SECRET1", "dXNlcjpTRUNSRVQy", "SECRET3", "SECRET4"):
        assert not any(secret in text for text in redacted)
    assert redact_text("Authorization failed; a bearer of bad news") == "Authorization failed; a bearer of bad news"


def test_an_s3_error_quoting_the_request_authorization_reaches_errors_and_logs_redacted(
    plain_server: PlainServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3-compatible server (or a proxy before it) may echo the request's Authorization header in its message;
    botocore puts that message in the error and logs the whole response body at DEBUG."""
    for name, value in s3_fixtures.DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    message = b"<Error><Code>AccessDenied</Code><Message>token rejected: Authorization: Bearer BEARERSECRET123" \
              b"</Message></Error>"
    plain_server.fail("/bucket/seq_000/a.tar", 403, headers={"Content-Type": "application/xml"}, body=message)
    destination = S3Destination(make_s3_client(plain_server.url("")), S3Url("bucket"))

    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as raised:
        destination.call("get_object", "seq_000/a.tar")

    assert "token rejected: Authorization: <redacted>" in str(raised.value)
    assert "Response body" in caplog.text and "BEARERSECRET123" not in caplog.text
