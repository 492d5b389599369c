"""dindind.docker.reference: one parser for every image reference form."""

import pytest

from dindind.base.errors import InputError
from dindind.docker import reference
from dindind.docker.images import split_ref

D1, D2 = "sha256:" + "a" * 64, "sha256:" + "0123456789abcdef" * 4

# ref -> (domain, path, tag, digest), then split_ref's (repository, tag or digest), then (registry, remote)
VALID = [
    ("busybox", ("", "busybox", "", ""), ("busybox", "latest"), ("registry-1.docker.io", "library/busybox")),
    ("busybox:1.36", ("", "busybox", "1.36", ""), ("busybox", "1.36"), ("registry-1.docker.io", "library/busybox")),
    ("team/app:v1", ("", "team/app", "v1", ""), ("team/app", "v1"), ("registry-1.docker.io", "team/app")),
    ("docker.io/me/dindind/node:v1", ("docker.io", "me/dindind/node", "v1", ""),
     ("docker.io/me/dindind/node", "v1"), ("registry-1.docker.io", "me/dindind/node")),
    ("index.docker.io/library/debian", ("index.docker.io", "library/debian", "", ""),
     ("index.docker.io/library/debian", "latest"), ("registry-1.docker.io", "library/debian")),
    ("localhost/app", ("localhost", "app", "", ""), ("localhost/app", "latest"), ("localhost", "app")),
    ("localhost:5000/dindind/node", ("localhost:5000", "dindind/node", "", ""),
     ("localhost:5000/dindind/node", "latest"), ("localhost:5000", "dindind/node")),
    ("127.0.0.1:5000/dindind/node:v1_x", ("127.0.0.1:5000", "dindind/node", "v1_x", ""),
     ("127.0.0.1:5000/dindind/node", "v1_x"), ("127.0.0.1:5000", "dindind/node")),
    ("[::1]:5000/app:1", ("[::1]:5000", "app", "1", ""), ("[::1]:5000/app", "1"), ("[::1]:5000", "app")),
    ("registry.example.com/team/sub/app:1.0-rc.1", ("registry.example.com", "team/sub/app", "1.0-rc.1", ""),
     ("registry.example.com/team/sub/app", "1.0-rc.1"), ("registry.example.com", "team/sub/app")),
    (f"app@{D1}", ("", "app", "", D1), ("app", D1), ("registry-1.docker.io", "library/app")),
    (f"app:v1@{D1}", ("", "app", "v1", D1), ("app", D1), ("registry-1.docker.io", "library/app")),
    (f"host:5000/name:tag@{D2}", ("host:5000", "name", "tag", D2), ("host:5000/name", D2), ("host:5000", "name")),
    (f"host:5000/name@{D2}", ("host:5000", "name", "", D2), ("host:5000/name", D2), ("host:5000", "name")),
    ("a__b/c-d--e/f.g_h:T_1", ("", "a__b/c-d--e/f.g_h", "T_1", ""), ("a__b/c-d--e/f.g_h", "T_1"),
     ("registry-1.docker.io", "a__b/c-d--e/f.g_h")),
    ("Host.Example/app", ("Host.Example", "app", "", ""), ("Host.Example/app", "latest"), ("Host.Example", "app")),
]

INVALID = [
    "", "App", "team/App", "app:", "app:tag:other", ":tag", "/app", "app/", "a//b", "app@", "app@sha256:abc",
    "app@sha256:" + "A" * 64, "app@sha256:" + "a" * 63, "host:port/app", "host:5000:1/app", "-app", "app-",
    "a..b", "app:" + "t" * 129, "app:-tag", "app name", "app\n", "app:v1\nExecStart=/bin/sh",
    "x" * 256, "host:5000/" + "x" * 250,
]


@pytest.mark.parametrize("ref, parts, split, registry", VALID, ids=[v[0][:40] for v in VALID])
def test_every_form_the_distribution_spec_allows(ref, parts, split, registry):
    r = reference.parse(ref)
    assert (r.domain, r.path, r.tag, r.digest) == parts
    assert r.name == split[0]
    assert split_ref(ref) == split
    assert (r.registry, r.remote) == registry


@pytest.mark.parametrize("ref", INVALID)
def test_invalid_references_are_one_clear_error(ref):
    with pytest.raises(InputError) as err:
        reference.parse(ref)
    assert err.value.hint and "image reference" in err.value.message
