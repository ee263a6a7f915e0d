"""Registry credentials and WWW-Authenticate parsing."""

import base64

import pytest

from crisp.errors import InvalidArgument
from crisp.images.auth import Credentials, TokenCache, parse_challenges


def test_bearer_challenge_parameters() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/busybox:pull"')
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    }


def test_several_challenges_and_unquoted_values() -> None:
    challenges = parse_challenges('Basic realm="a b, c", Bearer realm=https://x/t, service=x')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params == {"realm": "a b, c"}
    assert challenges[1].params == {"realm": "https://x/t", "service": "x"}


def test_username_and_password_make_a_basic_header() -> None:
    creds = Credentials(username="u", password="p:w")
    assert creds.basic_header() == "Basic " + base64.b64encode(b"u:p:w").decode()


def test_auth_field_is_decoded() -> None:
    creds = Credentials(auth=base64.b64encode(b"alice:secret").decode())
    assert creds.user_password() == ("alice", "secret")


def test_bad_auth_field_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="base64"):
        Credentials(auth="%%%").user_password()
    with pytest.raises(InvalidArgument, match="username:password"):
        Credentials(auth=base64.b64encode(b"nocolon").decode()).user_password()


def test_no_credentials() -> None:
    assert Credentials().basic_header() is None


def test_token_cache_expires() -> None:
    cache = TokenCache()
    cache.put("https://r", "scope", "me", "Bearer t", expires_in=300)
    assert cache.get("https://r", "scope", "me") == "Bearer t"
    assert cache.get("https://r", "other", "me") is None
    cache.put("https://r", "scope", "me", "Bearer old", expires_in=-100)
    assert cache.get("https://r", "scope", "me") is None
