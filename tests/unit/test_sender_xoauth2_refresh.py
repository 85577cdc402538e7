"""When a refused SMTP XOAUTH2 login earns one forced token refresh (pure decision)."""

from __future__ import annotations

from services.sender.smtp_transport import xoauth2_refresh_may_help


def test_a_permanent_refusal_of_a_stored_token_is_worth_one_refresh() -> None:
    assert xoauth2_refresh_may_help(535, refreshed=False)
    assert xoauth2_refresh_may_help(534, refreshed=False)


def test_a_token_minted_for_this_login_is_not_refreshed_again() -> None:
    assert not xoauth2_refresh_may_help(535, refreshed=True)


def test_a_temporary_failure_is_the_servers_trouble() -> None:
    assert not xoauth2_refresh_may_help(454, refreshed=False)
    assert not xoauth2_refresh_may_help(421, refreshed=False)
