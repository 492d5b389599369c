"""The e2e test images, built here: what ``build:e2e-images`` does (``node.e2e_images``).

e2e tests pull their images (agnhost, busybox, nginx, ...) at run time; a
machine cut off from registries cannot. This module builds the ones whose
content the Kubernetes module or Debian provides, tagged exactly as the
built ``e2e.test --list-images`` names them, as docker-archives the node
image preloads, and lists every other image with the reason it is not built.

Steps (each an up-to-date check away from a no-op):

1. :func:`classify`: every image e2e.test lists -> built here (a recipe),
   already preloaded (a component image: pause, etcd) or missing + reason.
2. ``go build`` of the Go images (GO_BINARIES: agnhost, sample-apiserver, ...) in the Kubernetes tree's own
   Go build (the same work module, env and Go as kubelet).
3. One ``docker build`` per image on the base image (Debian packages for
   the tools), all saved in one docker-archive
   ``artifacts/kubernetes/e2e-images/e2e-images.tar`` (shared layers once).
4. :func:`conformance_needs`: which ``[Conformance]`` test needs which image,
   read from the test sources (the test body and the file's own helpers it
   calls), so ``cluster:e2e --conformance`` skips by a generated list.
5. ``e2e-images.json``: the images (built / preloaded / missing + reason),
   the conformance test count and the tests that need a missing image.

A tag e2e lists in two versions (agnhost 2.66.1 and 2.55) gets the one
recipe built from this Kubernetes' sources twice with a label naming the
alias, so the two tags are two images (kubelet reports an image by id).
"""

import json
import re
from pathlib import Path

import yaml

from dindind.base import config as config_mod
from dindind.base import fsutil
from dindind.base.errors import DindindError

RECIPE = 1
ARCHIVE = "e2e-images.tar"            # every built image in one docker-archive
E2E_REGISTRY = "registry.k8s.io/e2e-test-images/"
UNPULLABLE = "invalid.registry.k8s.io/"

#: image name under registry.k8s.io/e2e-test-images -> recipe
RECIPES = {
    "agnhost": "agnhost", "kitten": "webserver", "nautilus": "webserver", "busybox": "busybox",
    "nginx": "nginx", "glibc-dns-testing": "glibc-dns-testing", "nonroot": "nonroot", "nonewprivs": "nonewprivs",
    "sample-apiserver": "sample-apiserver", "resource-consumer": "resource-consumer",
    "regression-issue-74839": "regression-issue-74839", "ipc-utils": "ipc-utils", "perl": "perl",
}

#: recipe -> {binary: Go package} built from the Kubernetes tree's own Go build ("k8s:" = a package of
#: k8s.io/kubernetes, else a module path the tree requires): sample-apiserver is the staging module the
#: e2e aggregator test imports, built at this Kubernetes' version (its tag names an older release)
GO_BINARIES = {
    "agnhost": {"e2e-agnhost": "k8s:test/images/agnhost"},
    "nonewprivs": {"e2e-nonewprivs": "k8s:test/images/nonewprivs"},
    "sample-apiserver": {"e2e-sample-apiserver": "k8s.io/sample-apiserver"},
    "resource-consumer": {"e2e-consumer": "k8s:test/images/resource-consumer",
                          "e2e-consume-cpu": "k8s:test/images/resource-consumer/consume-cpu"},
    "regression-issue-74839": {"e2e-regression-issue-74839": "k8s:test/images/regression-issue-74839"},
}

#: reference prefix -> why it is not built (the first match wins; the empty prefix is the fallback)
MISSING_REASONS = (
    ("gcr.io/k8s-authenticated-test/", "a private registry's image: the tests exercise pull credentials"),
    ("registry.k8s.io/sig-storage/", "a CSI sidecar or driver from its own repository, "
                                     "not in the Kubernetes module or Debian"),
    ("registry.k8s.io/cloud-provider-gcp/", "a cloud provider's CSI driver, outside the Kubernetes module"),
    ("registry.k8s.io/build-image/", "a Kubernetes build image (distroless), not made from the module or Debian"),
    (E2E_REGISTRY + "node-perf/", "third-party benchmark workloads (NPB, PyTorch), not in Debian"),
    (E2E_REGISTRY + "volume/", "an NFS/iSCSI server needing kernel modules a container cluster lacks"),
    ("", "no dindind recipe yet (not used by any [Conformance] test's own source)"),
)

AGNHOST_PACKAGES = ("bind9-dnsutils", "curl", "netcat-openbsd", "iproute2", "iperf", "socat", "util-linux", "bash",
                    "ca-certificates", "passwd")

_APT = ("RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        "{packages} && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* "
        "/var/log/dpkg.log\n")

DOCKERFILES = {
    # upstream: alpine + bind-tools curl netcat iproute2 iperf bash socat, /agnhost, coredns, porter's cert
    "agnhost": "FROM {base}\n" + _APT.format(packages=" ".join(AGNHOST_PACKAGES)) + (
        "RUN mkdir /uploads && ln -s /usr/bin/iperf /usr/local/bin/iperf"
        " && useradd -u 1000 -M -s /bin/sh user-defined-in-image && groupadd -g 50000 group-defined-in-image"
        " && usermod -a -G group-defined-in-image user-defined-in-image\n"
        "COPY files/ /\nRUN ln -s agnhost /agnhost-2\n{extra}"
        'EXPOSE 80 8080 8081 9376 5000\nENTRYPOINT ["/agnhost"]\nCMD ["pause"]\n'),
    # upstream: agnhost + the html folder, serving it (kitten, nautilus); on our agnhost, layers shared
    "webserver": 'FROM {agnhost}\nCOPY files/ /\n{extra}CMD ["test-webserver"]\n',
    # busybox-static with every applet linked (wget, nslookup, sleep, ...), nothing else but sh: Debian's
    # ash drops environment variables whose names are no shell identifiers ("data-1", which the ConfigMap
    # and Secret env tests print with `sh -c env`); upstream's keeps them, and so does bash-static
    "busybox": "FROM {base} AS get\n" + _APT.format(packages="busybox-static bash-static") + (
        "RUN mkdir -p /out/bin /out/etc /out/tmp /out/root /out/home && chmod 1777 /out/tmp"
        " && cp \"$(command -v busybox)\" /out/bin/busybox && cp \"$(command -v bash-static)\" /out/bin/bash"
        " && for a in $(/out/bin/busybox --list); do case \"$a\" in busybox|sh|bash) ;; "
        "*) ln -s busybox \"/out/bin/$a\";; esac; done && ln -s bash /out/bin/sh"
        " && printf 'root:x:0:0:root:/root:/bin/sh\\nnobody:x:65534:65534:nobody:/home:/bin/false\\n'"
        " > /out/etc/passwd && printf 'root:x:0:\\nnobody:x:65534:\\n' > /out/etc/group\n"
        "FROM scratch\nCOPY --from=get /out/ /\n{extra}"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCMD [\"sh\"]\n"),
    "nginx": "FROM {base}\n" + _APT.format(packages="nginx") + (
        "RUN ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log"
        " && sed -i 's#root /var/www/html;#root /usr/share/nginx/html;#' /etc/nginx/sites-available/default\n"
        "{extra}EXPOSE 80\nSTOPSIGNAL SIGQUIT\nCMD [\"nginx\", \"-g\", \"daemon off;\"]\n"),
    "glibc-dns-testing": "FROM {base}\n" + _APT.format(packages="bind9-dnsutils") + "COPY files/ /\n{extra}",
    "nonroot": "FROM {base}\n{extra}USER 1234\n",
    "nonewprivs": "FROM {base}\nCOPY files/ /\nRUN chmod u+s /usr/local/bin/nnp\n{extra}CMD [\"nnp\"]\n",
    # upstream: alpine + the binary, run as an aggregated API server next to an etcd (the etcd component image)
    "sample-apiserver": 'FROM {base}\nCOPY files/ /\n{extra}ENTRYPOINT ["/sample-apiserver"]\n',
    # upstream: debian-base + stress, /consumer and /consume-cpu
    "resource-consumer": "FROM {base}\n" + _APT.format(packages="stress") + (
        'COPY files/ /\n{extra}EXPOSE 8080\nENTRYPOINT ["/consumer"]\n'),
    "regression-issue-74839": 'FROM {base}\nCOPY files/ /\n{extra}ENTRYPOINT ["/regression-issue-74839"]\n',
    # upstream: alpine + util-linux (ipcmk, ipcs); Debian's base has util-linux: the build checks the tools
    "ipc-utils": "FROM {base}\nRUN command -v ipcmk && command -v ipcs\n{extra}",
    # upstream: the perl image (full perl with its modules)
    "perl": "FROM {base}\n" + _APT.format(packages="perl") + "{extra}",
}


class E2EImageError(DindindError):
    """The e2e image set could not be made: the message names the image or step."""


# ---------------------------------------------------------------- what to build (pure)

def parse_image_list(text):
    """``e2e.test --list-images`` output -> the sorted, distinct image references."""
    return sorted({line.strip() for line in text.splitlines() if line.strip() and " " not in line.strip()})


def classify(refs, preloaded, versions):
    """Every listed ref -> {"ref", "status", "recipe"/"reason", "alias_of"} (pure).

    status: built (a recipe here), preloaded (a component image), unpullable
    (the tests expect the pull to fail) or missing (with the reason).

    ``preloaded``: the refs the node already carries (the component images);
    ``versions``: {e2e image name: the version this Kubernetes' sources
    build} (agnhost 2.66.1): another listed version of it is an alias of that one.
    """
    out = []
    for ref in sorted(refs):
        entry = {"ref": ref}
        name, _, tag = ref.removeprefix(E2E_REGISTRY).rpartition(":")
        if ref in preloaded:
            entry.update(status="preloaded", source="a component image of the Kubernetes build")
        elif ref.startswith(E2E_REGISTRY) and name in RECIPES:
            entry.update(status="built", recipe=RECIPES[name], name=f"{name.replace('/', '-')}-{tag}")
            primary = versions.get(name)
            if primary and primary != tag:
                entry["alias_of"] = f"{E2E_REGISTRY}{name}:{primary}"
        elif ref.startswith(UNPULLABLE):
            # the tests want this pull to fail; it fails here as anywhere: not a reason to skip them
            entry.update(status="unpullable", reason="the tests expect this pull to fail (an invalid registry)")
        else:
            entry.update(status="missing", reason=next(r for p, r in MISSING_REASONS if ref.startswith(p)))
        out.append(entry)
    return out


# ---------------------------------------------------------------- which conformance test needs which image (pure)

_CONST = re.compile(r"imageutils\.([A-Z][A-Za-z0-9]*)\b")
_CONFIG = re.compile(r'configs\[(\w+)\]\s*=\s*Config\{[^,]+,\s*"([^"]+)",\s*"([^"]+)"\}')
_FUNC = re.compile(r"^func\s+(?:\([^)]*\)\s*)?(\w+)\s*[\[(]", re.M)
_IT = re.compile(r"framework\.ConformanceIt\(\s*(\"(?:[^\"\\]|\\.)*\"|`[^`]*`)")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_NOT_CODE = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|//[^\n]*|/\*.*?\*/', re.S)


def _code(text):
    """Go text without its string literals and comments (an image named in a message is not a use)."""
    return _NOT_CODE.sub('""', text)


def image_constants(manifest_text, refs):
    """test/utils/image/manifest.go's ``configs[X] = Config{registry, "name", "version"}`` -> {X: listed ref}."""
    out = {}
    for const, name, version in _CONFIG.findall(manifest_text):
        found = [r for r in refs if r.endswith(f"/{name}:{version}")]
        if len(found) == 1:
            out[const] = found[0]
    pause = [r for r in refs if r.startswith("registry.k8s.io/pause:")]
    if pause:
        out["GetPauseImageName"] = pause[0]
    return out


def _call_end(text, start):
    """The index after the parenthesis that closes the call opened at ``text[start]`` (strings, comments skipped)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c == "`":
            i = text.find("`", i + 1)
            if i < 0:
                return n
        elif text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                return n
        elif text.startswith("/*", i):
            i = text.find("*/", i)
            if i < 0:
                return n
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _funcs(text):
    """{name: body text} of the file's top-level functions and methods."""
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(text)]
    out = {}
    for (pos, name), nxt in zip(starts, [s for s, _ in starts[1:]] + [len(text)]):
        out[name] = out.get(name, "") + text[pos:nxt]
    return out


def _uses(body, funcs, consts):
    """The image constants ``body`` names, itself or through the file's functions it calls (transitively)."""
    seen, todo, found = set(), [body], set()
    while todo:
        text = _code(todo.pop())
        found |= {c for c in _CONST.findall(text) if c in consts}
        for call in set(_CALL.findall(text)):
            if call in funcs and call not in seen:
                seen.add(call)
                todo.append(funcs[call])
    return found


def conformance_needs(tests, sources, consts):
    """{codename: [image refs]} for every conformance test whose own source names an image (pure).

    ``tests``: ``e2e.test --list-conformance-tests`` entries (codename, file);
    ``sources``: {file: Go text}; ``consts``: :func:`image_constants`. The body
    of each ``framework.ConformanceIt`` and the file's own functions it calls
    count; helpers in other packages (the framework's agnhost pods) do not.
    """
    needs = {}
    for file, text in sources.items():
        funcs = _funcs(text)
        for m in _IT.finditer(text):
            title = json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)[1:-1]
            body = text[m.start():_call_end(text, text.index("(", m.start()))]
            refs = sorted({consts[c] for c in _uses(body, funcs, consts)})
            for t in tests:
                if refs and t["file"] == file and title in t["codename"]:
                    needs[t["codename"]] = sorted(set(needs.get(t["codename"], [])) | set(refs))
    return needs


def summary(images, tests, needs):
    """The e2e-images.json document (pure)."""
    missing = {i["ref"] for i in images if i["status"] == "missing"}
    skip = [{"codename": name, "images": sorted(set(refs) & missing)}
            for name, refs in sorted(needs.items()) if set(refs) & missing]
    return {"recipe": RECIPE, "images": images,
            "counts": {s: sum(1 for i in images if i["status"] == s) for s in ("built", "preloaded", "unpullable", "missing")},
            "conformance": {"total": len(tests), "skip_for_image": skip}}


def parse_conformance_list(text):
    """``e2e.test --list-conformance-tests`` (YAML written by our own build) -> [{codename, file}]."""
    try:
        data = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise E2EImageError(f"e2e.test --list-conformance-tests printed no YAML: {exc}") from None
    return [{"codename": str(t["codename"]), "file": str(t["file"])} for t in data
            if isinstance(t, dict) and "codename" in t and "file" in t]


# ---------------------------------------------------------------- the build (side effects)

def _run(argv, what, log):
    from dindind.build.sources import gobuild

    return gobuild.run_go(argv, cwd=Path(log).parent, env=None, log=log, what=what)


def _build_image(entry, dockerfile, files, base, epoch, dest, log, agnhost=None):
    """docker build of one image (skipped when its inputs are unchanged and the image is still there); its id."""
    from dindind.docker import engine
    from dindind.docker import images as engine_images

    stamp = dest / f"{entry['name']}.json"
    if "{agnhost}" in dockerfile and not agnhost:
        raise E2EImageError(f"{entry['ref']} is built on agnhost, and e2e.test lists no agnhost of this "
                            "Kubernetes' version", hint="set node.e2e_images: false, and report this")
    extra = (f'LABEL io.dindind.e2e.alias-of="{entry["alias_of"]}"\n' if entry.get("alias_of") else "")
    text = dockerfile.format(base=base["id"], extra=extra, agnhost=agnhost)
    inputs = {"ref": entry["ref"], "dockerfile": text, "recipe": RECIPE, "epoch": epoch, "base": base["id"],
              "files": {k: fsutil.sha256_file(src) for k, (src, _) in sorted(files.items())}}
    try:
        old = json.loads(stamp.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("inputs") == inputs and old.get("id") and engine.image_id(entry["ref"]) == old["id"]:
        return old["id"]
    ctx = fsutil.DeterministicTar(epoch)
    ctx.add_bytes("Dockerfile", text)
    for path, (src, mode) in sorted(files.items()):
        ctx.add_file(f"files/{path.lstrip('/')}", src, mode)
    ctx_tar = ctx.write_to(dest / f"{entry['name']}-context.tar")
    try:
        image = engine_images.build(ctx_tar, [entry["ref"]], log_path=log, echo=lambda line: None)
    finally:
        ctx_tar.unlink(missing_ok=True)
    fsutil.write_json(stamp, {"inputs": inputs, "id": image})
    return image


def _save_all(ids, dest):
    """One docker-archive of every built image (layers shared: the base once), rewritten when an id changed."""
    from dindind.docker import images as engine_images

    tar, stamp = dest / ARCHIVE, dest / "e2e-images.ids.json"
    try:
        same = tar.is_file() and json.loads(stamp.read_text()) == ids
    except (OSError, ValueError):
        same = False
    if not same:
        engine_images.save_refs(sorted(ids), tar)
        fsutil.write_json(stamp, ids)
    return tar


def build(cfg, layout, echo=print):
    """Build the e2e image set for the Kubernetes tree and write e2e-images.json; return the document."""
    from dindind.build.sources import gobuild, tree
    from dindind.build.sources import SOURCES

    source = SOURCES[cfg.kubernetes["source"]]
    if not hasattr(source, "plan"):
        raise E2EImageError(f"node.e2e_images needs a Kubernetes built from Go; kubernetes.source is "
                            f"{cfg.kubernetes['source']}", hint="set node.e2e_images: false, or kubernetes.source: module")
    plan, _ = source.plan(cfg, layout, gobuild.base_image(layout))
    kdir = plan.pause_c.parents[3]                       # <kubernetes>/build/pause/linux/pause.c
    summary_json = fsutil.read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary",
                                    hint="run `doit build:kubernetes` first")
    preloaded = {r for img in summary_json["images"] for r in img["refs"]}
    e2e_test = tree.test_binaries(cfg, layout)["e2e.test"]
    dest = layout.e2e_images
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "build.log"
    log.unlink(missing_ok=True)
    for stale in dest.glob("*.tar"):                     # archives of an earlier layout or run
        if stale.name != ARCHIVE:
            stale.unlink()
    refs = parse_image_list(_run([e2e_test, "--list-images"], "e2e.test --list-images", log))
    tests = parse_conformance_list(_run([e2e_test, "--list-conformance-tests"], "e2e.test --list-conformance-tests",
                                        log))
    versions = {"agnhost": (kdir / "test/images/agnhost/VERSION").read_text().strip()}
    images = classify(refs, preloaded, versions)
    wanted = {"agnhost"} | {e["recipe"] for e in images if e["status"] == "built"}
    for binary, pkg in sorted(b for r in sorted(wanted) for b in GO_BINARIES.get(r, {}).items()):
        gobuild.run_go(["go", "build", "-p", str(plan.jobs), "-trimpath", "-ldflags", "-s -w", "-o",
                        plan.bin / binary, plan.pkg(pkg[4:]) if pkg.startswith("k8s:") else pkg],
                       cwd=plan.cwd, env=plan.env, log=plan.log, what=f"building {pkg}")
    agnhost = {"/agnhost": (plan.bin / "e2e-agnhost", 0o755), "/coredns": (plan.bin / "coredns", 0o755),
               "/localhost.crt": (kdir / "test/images/agnhost/porter/localhost.crt", 0o644),
               "/localhost.key": (kdir / "test/images/agnhost/porter/localhost.key", 0o644)}
    built = {}
    # sorted refs: agnhost comes before kitten and nautilus, which are built on it
    for entry in images:
        if entry["status"] != "built":
            continue
        recipe, name = entry["recipe"], entry["ref"].removeprefix(E2E_REGISTRY).rpartition(":")[0]
        files = {}
        if recipe == "agnhost":
            files = agnhost
        elif recipe == "webserver":
            html = kdir / "test/images" / name / "html"
            files = {f"/{p.name}": (p, 0o644) for p in sorted(html.iterdir()) if p.is_file()}
        elif recipe == "glibc-dns-testing":
            files = {"/coredns": agnhost["/coredns"]}
        elif recipe == "nonewprivs":
            files = {"/usr/local/bin/nnp": (plan.bin / "e2e-nonewprivs", 0o755)}
        elif recipe in GO_BINARIES:
            files = {f"/{b.removeprefix('e2e-')}": (plan.bin / b, 0o755) for b in GO_BINARIES[recipe]}
        echo(f"  e2e image {entry['ref']}")
        entry["id"] = _build_image(entry, DOCKERFILES[recipe], files, gobuild.base_image(layout), plan.epoch, dest,
                                   log, agnhost=built.get(f"{E2E_REGISTRY}agnhost:{versions['agnhost']}"))
        built[entry["ref"]] = entry["id"]
    ids = {i["ref"]: i["id"] for i in images if i["status"] == "built"}
    tar = _save_all(ids, dest)
    conf_files = sorted({t["file"] for t in tests})
    sources = {f: (kdir / f).read_text() for f in conf_files if (kdir / f).is_file()}
    consts = image_constants((kdir / "test/utils/image/manifest.go").read_text(), refs)
    doc = summary(images, tests, conformance_needs(tests, sources, consts))
    doc["version"] = plan.version
    doc["archive"] = {"name": ARCHIVE, "sha256": fsutil.sha256_file(tar)}   # the node image follows it
    fsutil.write_if_changed(layout.e2e_images_json(), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    c = doc["counts"]
    echo(f"  e2e images: {c['built']} built, {c['preloaded']} preloaded, {c['missing']} missing "
         f"({len(doc['conformance']['skip_for_image'])} of {doc['conformance']['total']} conformance tests "
         "need a missing image)")
    return doc


def tarballs(layout):
    """{name: docker-archive} the node image preloads: the one archive of every built e2e image (or none)."""
    doc = fsutil.read_json(layout.e2e_images_json(), "e2e image list", hint="run `doit build:e2e-images` first")
    return {"e2e-images": layout.e2e_images / ARCHIVE} if any(i["status"] == "built" for i in doc["images"]) else {}


def enabled(cfg):
    return config_mod.e2e_images(cfg)
