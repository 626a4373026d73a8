"""`python -m mediagen.embedded --data-dir DIR`: run the embedded servers until SIGINT/SIGTERM."""

import sys

from mediagen import extras
from mediagen.embedded import main


def _main() -> int:
    try:
        extras.require("embedded", "python -m mediagen.embedded")
    except extras.MissingExtraError as exc:
        print(exc, file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(_main())
