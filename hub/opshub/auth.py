"""Login through an OpenID Connect provider that may be down when the hub starts, or later.

oauthenticator 17's GenericOAuthenticator knows no issuer: it needs its three endpoints at start.
opshub reads them from the issuer's discovery document (`opshub.startup.check_issuer`); when the
provider cannot be reached then (a Keycloak restarting), the hub starts without them and this
authenticator reads the document at the next login instead. Until the provider answers, logging in
gets a 503 page naming it; a failed read is remembered for `discovery_retry_interval` seconds, so a
flood of logins asks the provider at most once in that time. Once read, the endpoints are kept.
"""

from __future__ import annotations

import asyncio
import time

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Float, Unicode

from .startup import discovery_url, endpoints_from_document

UNREACHABLE = "Identity provider unreachable"  # the error page's heading and the HTTP reason phrase
ENDPOINT_TRAITS = {"authorize_url": "authorize_url", "token_url": "token_url", "userinfo_url": "userdata_url"}


def unreachable_message(issuer: str, contact: str) -> str:
    """What people read when the provider cannot be reached: which one, and what to do."""
    return (
        f"The identity provider at {issuer} cannot be reached, so nobody can log in to this hub right now"
        " (people already logged in, and unattended runs, are not affected). Try again in a few minutes;"
        f" if it lasts, tell {contact} that this hub cannot reach its identity provider."
    )


class OIDCLoginHandler(OAuthLoginHandler):
    """The sign-in button's target: the provider's endpoints first (or the 503 page), then the redirect."""

    async def get(self):
        await self.authenticator.ensure_endpoints()
        super().get()


class OIDCAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator that finds its endpoints in the issuer's discovery document when the hub
    starts without them, and says plainly when the identity provider cannot be reached."""

    login_handler = OIDCLoginHandler

    oidc_issuer = Unicode(
        config=True,
        help="The OpenID Connect issuer URL (auth.oidc.issuer). Endpoints left empty are read from"
        " <issuer>/.well-known/openid-configuration at the first login that needs them.",
    )
    contact = Unicode(
        "a hub admin",
        config=True,
        help="Whom people should tell when the identity provider stays unreachable (auth.contact).",
    )
    discovery_timeout = Float(
        5.0,
        config=True,
        help="Seconds to wait for the discovery document at login before saying the provider cannot be reached.",
    )
    discovery_retry_interval = Float(
        10.0,
        config=True,
        help="Seconds a failed read of the discovery document is remembered: logins in that time get the"
        " 'cannot be reached' page at once, without asking the provider again.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._discovery_lock = asyncio.Lock()
        self._discovery_failed_at: float | None = None

    def missing_endpoints(self) -> list[str]:
        return [key for key, trait in ENDPOINT_TRAITS.items() if not getattr(self, trait)]

    def unreachable(self) -> web.HTTPError:
        return web.HTTPError(503, unreachable_message(self.oidc_issuer, self.contact), reason=UNREACHABLE)

    def _failed_recently(self) -> bool:
        failed = self._discovery_failed_at
        return failed is not None and time.monotonic() - failed < self.discovery_retry_interval

    async def ensure_endpoints(self) -> None:
        """Fill in the endpoints from the discovery document, or raise the 503 page (HTTPError)."""
        if not self.missing_endpoints():
            return
        if self._failed_recently():
            raise self.unreachable()
        async with self._discovery_lock:  # logins arriving meanwhile wait for this read, not their own
            if not self.missing_endpoints():
                return
            if self._failed_recently():
                raise self.unreachable()
            url = discovery_url(self.oidc_issuer)
            try:
                document = await self.httpfetch(
                    url,
                    "reading the discovery document",
                    connect_timeout=self.discovery_timeout,
                    request_timeout=self.discovery_timeout,
                    validate_cert=self.validate_server_cert,
                )
                given = {key: getattr(self, trait) for key, trait in ENDPOINT_TRAITS.items()}
                endpoints = endpoints_from_document(self.oidc_issuer, document, given)
            except (OSError, HTTPClientError, ValueError) as e:
                self._discovery_failed_at = time.monotonic()
                self.log.warning(
                    "Login refused: could not use the discovery document %s (%s); retrying at a login after %g s",
                    url,
                    e,
                    self.discovery_retry_interval,
                )
                raise self.unreachable() from None
            for key, trait in ENDPOINT_TRAITS.items():
                setattr(self, trait, endpoints[key])
            self._discovery_failed_at = None
            self.log.info("Read the identity provider's endpoints from %s", url)

    async def authenticate(self, handler, data=None, **kwargs):
        """The callback: the same 503 page, instead of a 500, when the provider stops answering mid-login."""
        await self.ensure_endpoints()
        try:
            return await super().authenticate(handler, data, **kwargs)
        except (OSError, HTTPClientError) as e:
            if isinstance(e, HTTPClientError) and e.code < 500:
                raise  # the provider answered: oauthenticator's own handling
            self.log.warning("Login refused: the identity provider %s did not answer (%s)", self.oidc_issuer, e)
            raise self.unreachable() from None
