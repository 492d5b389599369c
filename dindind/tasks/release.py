"""The ``release`` and ``release:verify`` tasks."""

from dindind.base.errors import DindindError
from dindind.tasks import BUILD_LOCK, action, load_inputs


RELEASE_PARAMS = [
    {"name": "version", "long": "version", "type": str, "default": "",
     "help": "the release version, a docker tag ('+' becomes '_'); "
             "default: the Kubernetes version and `git describe --always --dirty` of the project"},
    {"name": "push", "long": "push", "type": str, "default": "",
     "help": "push <REGISTRY>/dindind/{node,cluster}:<version> to this registry (host[:port][/path]) "
             "and record the verified digests"},
    {"name": "out_dir", "long": "dir", "type": str, "default": "",
     "help": "the release directory (default: artifacts/release/<version>; relative to the project root)"},
]


@action
def do_release(config_path, root, version, registry, out_dir):
    from dindind.release import make, verify

    cfg, lay = load_inputs(config_path, root)
    dest = make.make(cfg, lay, version=version or None, registry=registry or None, out_dir=out_dir or None)
    verify.verify(dest)


@action
def do_release_verify(config_path, root, release_dir="", version=""):
    from dindind.release import make, verify

    if not release_dir:
        cfg, lay = load_inputs(config_path, root)
        release_dir = make.resolve_dir(cfg, lay, version or None)[1]
    verify.verify(release_dir)


def release_task(config_path, root, version="", push="", out_dir=""):
    """The ``release`` task: build, write the release directory, push (``--push``), verify it.

    ``version``, ``push`` and ``out_dir`` come from ``doit release --version V
    --push REGISTRY --dir DIR`` through doit's @task_params, which hands a
    task's options to its creator: bad values fail here, before anything is
    built.
    """
    from doit.exceptions import InvalidTask

    from dindind.release import manifest as release_manifest
    from dindind.release import push as release_push

    try:
        if version:
            release_manifest.check_version(version)
        if push:
            release_push.check_registry(push)
    except DindindError as exc:
        raise InvalidTask(exc.render().removeprefix("ERROR: ")) from None
    args = (str(config_path) if config_path else None, str(root))
    return {
        "actions": [(do_release, args + (version, push, out_dir))],
        "task_dep": ["build"],
        "meta": BUILD_LOCK,
        "uptodate": [False],
        "verbosity": 2,
    }


def release_verify_task(config_path, root):
    """The ``release:verify`` task, with its own ``--dir`` and ``--version`` params.

    A task of its own (named with doit's subtask separator) rather than a
    subtask of ``release``: doit runs a group's subtasks in no fixed order, so
    verify could run before the release it checks, and `doit release:verify
    --dir DIR` must not build anything. `doit release` verifies what it wrote
    itself.
    """
    args = (str(config_path) if config_path else None, str(root))
    return {
        "basename": "release:verify",
        "actions": [(do_release_verify, args)],
        "params": [
            {"name": "release_dir", "long": "dir", "type": str, "default": "",
             "help": "the release directory to check (default: artifacts/release/<version>)"},
            {"name": "version", "long": "version", "type": str, "default": "",
             "help": "the version whose release to check (default: this checkout's)"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
