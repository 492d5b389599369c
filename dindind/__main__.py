"""``python -m dindind``: small commands outside doit.

    python -m dindind engine        make sure a Docker engine answers (root)
    python -m dindind schema        print the config JSON Schema
    python -m dindind check [PATH]  validate a config file (and $SOURCE_DATE_EPOCH)
"""

import json
import sys

from dindind.base import config
from dindind.docker import engine
from dindind.base.errors import DindindError


def main(argv):
    cmd = argv[0] if argv else "help"
    try:
        if cmd == "engine":
            print(engine.ensure())
        elif cmd == "schema":
            print(json.dumps(config.json_schema(), indent=2))
        elif cmd == "check":
            cfg = config.load(argv[1] if len(argv) > 1 else None)
            cfg.source_date_epoch       # a malformed $SOURCE_DATE_EPOCH fails the build: say so here
            print(f"{cfg.path}: ok")
        else:
            print(__doc__.strip())
            return 0 if cmd in ("help", "-h", "--help") else 2
    except DindindError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
