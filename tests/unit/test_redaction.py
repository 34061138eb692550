from __future__ import annotations

from shared.core.redaction import mask_uri, redact, register_secret


def test_mask_uri_hides_only_the_password() -> None:
    assert mask_uri("postgresql://u:p%40ss@host:5432/db?sslmode=require") == "postgresql://u:***@host:5432/db?sslmode=require"
    assert mask_uri("mongodb://127.0.0.1:27017/app") == "mongodb://127.0.0.1:27017/app"
    assert mask_uri("postgresql://u:pw@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"


def test_redact_masks_uri_passwords_inside_free_text() -> None:
    text = "could not dump mongodb://admin:hunter2x@db:27017/x: refused"
    assert redact(text) == "could not dump mongodb://admin:***@db:27017/x: refused"


def test_registered_secrets_are_masked_in_any_form() -> None:
    register_secret("p@ss/word")
    assert redact("auth p@ss/word and p%40ss%2Fword") == "auth *** and ***"
